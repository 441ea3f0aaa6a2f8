import Foundation

/// Large transactions the source sends before they commit (pgoutput
/// `streaming`), in blocks between other transactions. Each one's messages are
/// kept in a file of its own, in arrival order, so memory does not grow with
/// it; at its commit they are read back and applied as one transaction in the
/// source's commit order; at its abort they are forgotten, or cut back to where
/// an aborted subtransaction began (a subtransaction that began later is nested
/// in it, so it went too), as PostgreSQL's own apply worker does with its files.
///
/// The files live in a private directory that ``removeAll()`` deletes: a new
/// attempt after a lost connection streams those transactions again from their
/// start.
struct StreamedTransactions {
    /// The directory given (in the run's own state directory), or nil for a new one under the temporary directory.
    private let given: String?
    /// Where the files go; created with the first streamed transaction.
    private var directory: String?
    private var spools: [UInt32: Spool] = [:]
    /// The transaction whose block is open, if any.
    private(set) var openBlock: UInt32?

    fileprivate final class Spool {
        let path: String
        let file: FileHandle
        /// Written, and waiting in `buffer`.
        var size: UInt64 = 0
        var buffer: [UInt8] = []
        /// Where each subtransaction's first message starts.
        var subtransactionStarts: [UInt32: UInt64] = [:]

        init(path: String) throws {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw MigrationError(.streamApply, "could not create \(path) for a streamed transaction")
            }
            self.path = path
            file = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        }

        var end: UInt64 { size + UInt64(buffer.count) }

        func append(_ message: [UInt8]) throws {
            withUnsafeBytes(of: UInt32(message.count).bigEndian) { buffer.append(contentsOf: $0) }
            buffer.append(contentsOf: message)
            if buffer.count >= 1 << 20 { try write() }
        }

        func write() throws {
            guard !buffer.isEmpty else { return }
            try file.seekToEnd()
            try file.write(contentsOf: buffer)
            size += UInt64(buffer.count)
            buffer.removeAll(keepingCapacity: true)
        }

        func truncate(at offset: UInt64) throws {
            try write()
            try file.truncate(atOffset: offset)
            size = offset
        }
    }

    /// `directory`: where to keep the files, only this run's (what an earlier attempt or a killed run left
    /// there is removed now); nil for a new directory under `$TMPDIR`.
    init(directory: String? = nil) {
        given = directory
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// A block of transaction `xid` begins: its messages go to its file until the block stops.
    mutating func startBlock(_ xid: UInt32) throws {
        openBlock = xid
        guard spools[xid] == nil else { return }
        let directory = try self.directory ?? makeDirectory()
        spools[xid] = try Spool(path: directory + "/\(xid)")
    }

    mutating func stopBlock() { openBlock = nil }

    /// Keeps a message of the open block (`subtransaction`: the xid it carries).
    func keep(_ message: [UInt8], subtransaction: UInt32?) throws {
        guard let xid = openBlock, let spool = spools[xid] else {
            throw MigrationError(.streamApply, "the replication stream sent a streamed change outside a stream block")
        }
        if let sub = subtransaction, sub != xid, spool.subtransactionStarts[sub] == nil { spool.subtransactionStarts[sub] = spool.end }
        try spool.append(message)
    }

    /// Transaction `xid` aborted (`subtransaction == xid`), or only that subtransaction of it.
    mutating func abort(_ xid: UInt32, subtransaction: UInt32) throws {
        guard let spool = spools[xid] else { return }
        if subtransaction == xid {
            remove(xid)
            return
        }
        guard let start = spool.subtransactionStarts[subtransaction] else { return }  // it changed nothing published
        try spool.truncate(at: start)
        spool.subtransactionStarts = spool.subtransactionStarts.filter { $0.value < start }
    }

    /// The messages of committed transaction `xid`, in order, read back a piece at a time; its file is
    /// removed once they are all read.
    mutating func committed(_ xid: UInt32) throws -> Reader? {
        guard let spool = spools.removeValue(forKey: xid) else { return nil }
        try spool.write()
        try spool.file.seek(toOffset: 0)
        return Reader(spool: spool)
    }

    struct Reader {
        fileprivate let spool: Spool
        private var buffer: [UInt8] = []
        private var offset = 0

        fileprivate init(spool: Spool) { self.spool = spool }

        /// The next message, or nil at the end (the file is then removed).
        mutating func next() throws -> [UInt8]? {
            guard let header = try take(4) else {
                try? spool.file.close()
                try? FileManager.default.removeItem(atPath: spool.path)
                return nil
            }
            let length = header.reduce(0) { $0 << 8 | Int($1) }
            guard let message = try take(length) else {
                throw MigrationError(.streamApply, "a streamed transaction's file \(spool.path) ends early")
            }
            return message
        }

        private mutating func take(_ count: Int) throws -> [UInt8]? {
            while buffer.count - offset < count {
                let more = try spool.file.read(upToCount: max(1 << 20, count)) ?? Data()
                if more.isEmpty { return nil }
                buffer.removeFirst(offset)
                offset = 0
                buffer.append(contentsOf: more)
            }
            defer { offset += count }
            return Array(buffer[offset..<(offset + count)])
        }
    }

    /// Forgets every transaction kept, and their directory.
    mutating func removeAll() {
        for xid in Array(spools.keys) { remove(xid) }
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
        directory = nil
        openBlock = nil
    }

    private mutating func remove(_ xid: UInt32) {
        guard let spool = spools.removeValue(forKey: xid) else { return }
        try? spool.file.close()
        try? FileManager.default.removeItem(atPath: spool.path)
    }

    private mutating func makeDirectory() throws -> String {
        let path = given ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("pg_dbmigrator-relay-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        directory = path
        return path
    }
}
