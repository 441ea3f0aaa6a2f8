import Foundation
import PostgresClient

/// Runs `pg_dump` against the source and `pg_restore` against the target.
struct DumpRestore {
    var config: MigrationConfig
    var tools: PostgresTools
    var events: EventEmitter
    /// What `pg_dump` dumps, by exact name.
    var tables: TableSet

    var source: Endpoint { config.sourceEndpoint }
    var target: Endpoint { config.targetEndpoint }

    /// `pg_dump -Fd -j N` into `directory`; `snapshot` makes it read an exported snapshot.
    func dump(into directory: DumpDirectory, snapshot: String? = nil) async throws {
        var arguments = ["--format=directory", "--jobs=\(config.jobs)", "--file=\(directory.dumpPath)"]
        switch config.dumpScope {
        case .all: break
        case .schemaOnly: arguments.append("--schema-only")
        case .dataOnly: arguments.append("--data-only")
        }
        try await runPgDump(arguments, snapshot: snapshot)
    }

    /// The native copy's dump: one custom-format archive with the schema and
    /// every piece of data the native copy does not carry itself (sequence
    /// values, large objects, extension configuration tables, materialized
    /// view contents): the tables in `excludingDataOf` are left out by exact name.
    func dumpSchema(into directory: DumpDirectory, snapshot: String, excludingDataOf tables: [QualifiedName]) async throws {
        // Our catalog session holds the tables' locks: a DDL statement queued behind it would hold
        // pg_dump's locks forever, and nobody would see a deadlock. Fail after a minute instead.
        let arguments =
            ["--format=custom", "--file=\(directory.archivePath)", "--lock-wait-timeout=60000"]
            + tables.map { "--exclude-table-data=\($0.exactPattern)" }
        try await runPgDump(arguments, snapshot: snapshot)
    }

    private func runPgDump(_ formatArguments: [String], snapshot: String?) async throws {
        let applicationName = "pg_dbmigrator pg_dump \(UUID().uuidString.prefix(8))"
        let connection = try source.childConnection(applicationName: applicationName)
        defer { connection.remove() }
        var arguments = formatArguments + connection.arguments + tables.pgDumpArguments
        if let snapshot { arguments.append("--snapshot=\(snapshot)") }
        let child = ChildProcess(executable: tools.pgDump.path, arguments: arguments, environment: connection.environment)
        let exit = try await LockWait(server: source, events: events, stage: .dump, timeout: config.lockTimeout)
            .watching("dumping with pg_dump", blockers: .application(applicationName)) { try await child.run() }
        guard exit.succeeded else {
            throw MigrationError(
                .dump, "pg_dump failed (\(describe(exit))): \(errorLines(exit, scrubbing: config.source).joined(separator: "; "))",
                fix: "see pg_dump's message above; \(Setting.excludeTables)/\(Setting.excludeSchemas) can leave out objects it cannot read")
        }
    }

    /// The restore, as three passes so that indexes and constraints are built
    /// after the data is in, each pass with `--jobs` workers where pg_restore allows.
    /// Returns the errors `pg_restore` reported and was told to tolerate.
    func restore(from directory: DumpDirectory) async throws -> [String] {
        let sections: [String] =
            switch config.dumpScope {
            case .all: ["pre-data", "data", "post-data"]
            case .schemaOnly: ["pre-data", "post-data"]
            case .dataOnly: ["data"]
            }
        var tolerated: [String] = []
        for section in sections {
            // Our own publications (post-data) stay behind.
            let list = section == "post-data" ? try await restoreList(of: directory.dumpPath, writingTo: directory.listPath) : nil
            // pre-data is mostly serial DDL; workers only pay off for data and indexes.
            tolerated += try await restore(
                section: section, from: directory.dumpPath, jobs: section == "pre-data" ? 1 : config.jobs, list: list)
        }
        return tolerated
    }

    /// One `pg_restore --section` pass; `list` restricts it to the entries of a
    /// `pg_restore -l` list file (lines starting with `;` are skipped).
    /// `skippingExisting` (a pass an interrupted run began) accepts "already exists" errors.
    func restore(
        section: String, from archive: String, jobs: Int, list: String? = nil, skippingExisting: Bool = false,
        serverOptions: String? = nil
    ) async throws -> [String] {
        try Task.checkCancellation()
        let started = ContinuousClock.now
        let applicationName = "pg_dbmigrator pg_restore \(UUID().uuidString.prefix(8))"
        let connection = try target.childConnection(applicationName: applicationName)
        defer { connection.remove() }
        var arguments = ["--section=\(section)"] + connection.arguments
        if jobs > 1 { arguments.append("--jobs=\(jobs)") }
        if let list { arguments.append("--use-list=\(list)") }
        if config.noOwner { arguments.append("--no-owner") }
        if config.noACL { arguments.append("--no-acl") }
        arguments.append(archive)
        var environment = connection.environment
        if let serverOptions {
            let inherited = ProcessInfo.processInfo.environment["PGOPTIONS"].map { $0 + " " } ?? ""
            environment["PGOPTIONS"] = inherited + serverOptions
        }
        let child = ChildProcess(executable: tools.pgRestore.path, arguments: arguments, environment: environment)
        let exit = try await LockWait(server: target, events: events, stage: .restore, timeout: config.lockTimeout)
            .watching("restoring the \(section) section with pg_restore", blockers: .application(applicationName)) { try await child.run() }
        let errors = errorLines(exit, scrubbing: config.target)
        var tolerated: [String] = []
        if !exit.succeeded && skippingExisting && exit.code == 1 && !errors.isEmpty
            && errors.allSatisfy({ $0.contains("already exists") || $0.contains("is already member of publication") })
        {
            events.info(
                .restore, "\(errors.count) object(s) of the \(section) section were already made by the interrupted run; skipped",
                ["section": .string(section), "existing": .list(errors)])
        } else if !exit.succeeded {
            // pg_restore exits 1 when it skipped statements that failed, and says which.
            guard config.allowRestoreErrors, exit.code == 1, !errors.isEmpty else {
                throw MigrationError(
                    .restore,
                    "pg_restore failed in the \(section) section (\(describe(exit))): \(errors.prefix(10).joined(separator: "; "))"
                        + (errors.count > 10 ? "; … and \(errors.count - 10) more" : ""),
                    fix:
                        "fix the cause on the target and rerun with \(Setting.resume) (or remove the run's record with \(Setting.mode) cleanup "
                        + "and run again with \(Setting.dropTargetFirst)), "
                        + "or pass \(Setting.allowRestoreErrors) if these objects do not matter")
            }
            events.warning(
                .restore,
                "pg_restore reported \(errors.count) error(s) in the \(section) section; continuing (\(Setting.allowRestoreErrors))",
                ["section": .string(section), "errors": .list(errors)])
            tolerated = errors
        }
        let seconds = (ContinuousClock.now - started).seconds
        events.info(
            .restore, "restored \(section) in \(formatSeconds(seconds))",
            ["section": .string(section), "seconds": .double(seconds)])
        return tolerated
    }

    /// Writes to `listPath` the archive's table of contents without our own publications (see
    /// ``RestoreList/ownPublications(on:)``) and the entries of `built`, for `pg_restore --use-list`.
    /// Returns `listPath`, or nil when nothing is left out.
    func restoreList(of archive: String, writingTo listPath: String, excluding built: Set<RestoreList.Entry> = []) async throws
        -> String?
    {
        var exclusions = try await source.withConnection(stage: .restore) { try await RestoreList.ownPublications(on: $0) }
        exclusions.entries.formUnion(built)
        guard !exclusions.isEmpty else { return nil }
        let contents = try await tableOfContents(of: archive, writingTo: listPath)
        try RestoreList(lines: contents).excluding(exclusions).joined(separator: "\n")
            .write(toFile: listPath, atomically: true, encoding: .utf8)
        return listPath
    }

    /// The archive's table of contents (`pg_restore --list`), one entry a line.
    private func tableOfContents(of archive: String, writingTo listPath: String) async throws -> [String] {
        let child = ChildProcess(
            executable: tools.pgRestore.path, arguments: ["--list", "--file=\(listPath)", archive], environment: [:])
        let exit = try await child.run()
        guard exit.succeeded, let text = try? String(contentsOfFile: listPath, encoding: .utf8) else {
            throw MigrationError(.restore, "pg_restore --list failed (\(describe(exit))): \(exit.output.suffix(5).joined(separator: "; "))")
        }
        return text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    private func describe(_ exit: ChildProcess.Exit) -> String {
        if let code = exit.code { return "exit code \(code)" }
        return "killed by signal \(exit.signal ?? 0)"
    }

    /// The child's error lines, with the password scrubbed out just in case a server echoed it.
    private func errorLines(_ exit: ChildProcess.Exit, scrubbing connection: ConnectionString) -> [String] {
        let errors = exit.output.filter { $0.contains("error:") || $0.contains("FATAL:") || $0.contains("ERROR:") }
        let lines = errors.isEmpty ? Array(exit.output.suffix(5)) : errors
        return lines.map { connection.scrub($0).trimmingCharacters(in: .whitespaces) }
    }
}
