import Foundation

/// A loopback TCP relay between the tool and a server, for fault tests: it can
/// slow every connection down (so a copy is still running when the test acts)
/// and cut every open connection at once (a network failure, as the tool sees it).
final class TCPRelay: @unchecked Sendable {
    let port: Int
    private let targetPort: Int
    private let listener: Int32
    private let lock = NSLock()
    private var sockets: Set<Int32> = []
    private var rate: Int?
    private var stopped = false

    /// Relays 127.0.0.1:`port` to 127.0.0.1:`targetPort`; `bytesPerSecond` throttles each direction of each connection.
    init(to targetPort: Int, bytesPerSecond: Int? = nil) throws {
        self.targetPort = targetPort
        rate = bytesPerSecond
        signal(SIGPIPE, SIG_IGN)  // a write to a connection the other side dropped must fail, not end the test process
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 64) == 0 else { throw TestSupportError("relay: cannot listen: \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        self.listener = listener
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    var bytesPerSecond: Int? {
        get { lock.withLock { rate } }
        set { lock.withLock { rate = newValue } }
    }

    /// Cuts every open connection; new ones are still accepted.
    func cutAll() {
        let open = lock.withLock { sockets }
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    func stop() {
        lock.withLock { stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        cutAll()
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if lock.withLock({ stopped }) { return }
                continue
            }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: UInt16(targetPort))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else {
                close(client)
                close(server)
                continue
            }
            lock.withLock { sockets.formUnion([client, server]) }
            let finished = Finished()
            Thread.detachNewThread { [self] in pump(from: client, to: server, finished) }
            Thread.detachNewThread { [self] in pump(from: server, to: client, finished) }
        }
    }

    /// Both directions of one connection: the second to end closes the sockets.
    private final class Finished: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        func oneMore() -> Bool {
            lock.withLock {
                count += 1; return count == 2
            }
        }
    }

    private func pump(from input: Int32, to output: Int32, _ finished: Finished) {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let chunk = lock.withLock { rate }.map { max(1024, min(buffer.count, $0 / 20)) } ?? buffer.count
            let count = read(input, &buffer, chunk)
            if count <= 0 { break }
            var sent = 0
            while sent < count {
                let written = buffer[sent..<count].withUnsafeBytes { send(output, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if written <= 0 { break }
                sent += written
            }
            if sent < count { break }
            if let rate = lock.withLock({ rate }) { usleep(useconds_t(Double(count) / Double(rate) * 1_000_000)) }
        }
        shutdown(output, Int32(SHUT_RDWR))
        shutdown(input, Int32(SHUT_RDWR))
        if finished.oneMore() {
            lock.withLock { sockets.subtract([input, output]) }
            close(input)
            close(output)
        }
    }
}
