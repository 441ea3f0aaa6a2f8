import Foundation
import PostgresClient

/// The copy both modes share: Dump → Restore (→ Analyze), optionally
/// reading an exported snapshot so the copy lines up with a replication slot.
struct DatabaseCopy {
    var config: MigrationConfig
    var report: PreflightReport
    var events: EventEmitter
    var store: RunStateStore
    var resumePlan: ResumePlan
    /// Set by an offline run that verifies: the native copy digests what it copies (``StreamVerification``).
    var streamed: StreamVerification? = nil

    /// Copies the source (as of `snapshot`, when given) into the target, by
    /// the native engine or by `pg_dump`/`pg_restore`. `releaseSnapshot` runs
    /// as soon as nothing reads the snapshot any more: the online path releases
    /// its slot's snapshot there. Returns tolerated restore errors.
    func run(snapshot: String? = nil, releaseSnapshot: () async -> Void = {}) async throws -> [String] {
        guard usesNativeCopy else { return try await dumpAndRestore(snapshot: snapshot, afterDump: releaseSnapshot) }
        return try await NativeCopy(
            config: config, report: report, events: events, store: store, resumePlan: resumePlan, streamed: streamed
        )
        .run(snapshot: snapshot, prepareTarget: prepareTarget, releaseSnapshot: releaseSnapshot)
    }

    /// The native engine copies whole databases; schema-only and data-only copies go through the dump.
    var usesNativeCopy: Bool { config.copyMethod == .native && config.dumpScope == .all }

    private func dumpAndRestore(snapshot: String?, afterDump: () async -> Void) async throws -> [String] {
        let copy = DumpRestore(config: config, tools: report.tools, events: events, tables: report.tables)
        let recorded = store.current.copy
        if resumePlan.reusesFinishedDump, recorded.dumpComplete, let path = recorded.dumpPath, FileManager.default.fileExists(atPath: path)
        {
            let directory = DumpDirectory(root: path)
            events.info(.dump, "reusing the dump the interrupted run finished in \(path)", ["path": .string(path)])
            await afterDump()
            let tolerated = try await restore(from: directory, with: copy)
            directory.remove()
            return tolerated
        }
        let directory = try DumpDirectory.create(at: config.dumpPath, reclaiming: resumePlan.reclaimsDumpDirectory)
        var keep = false
        defer { if !keep { directory.remove() } }
        try store.update { $0.copy = RunState.CopyState(dumpPath: directory.root) }
        var detail: [String: EventValue] = ["jobs": .int(config.jobs), "path": .string(directory.root)]
        if let snapshot { detail["snapshot"] = .string(snapshot) }
        if let snapshot { try await checkTablesUnchanged(in: snapshot) }
        events.info(.dump, "dumping the source with pg_dump", detail)
        let dumpStarted = ContinuousClock.now
        try await copy.dump(into: directory, snapshot: snapshot)
        await afterDump()
        try store.update { $0.copy.dumpComplete = true }
        let dumpSeconds = (ContinuousClock.now - dumpStarted).seconds
        let bytes = directory.size
        events.info(
            .dump, "dump finished: \(formatBytes(bytes)) in \(formatSeconds(dumpSeconds))",
            ["bytes": .int(bytes), "seconds": .double(dumpSeconds)])
        do {
            return try await restore(from: directory, with: copy)
        } catch  where config.mode == .offline && !(error is CancellationError) {
            keep = true
            events.warning(.restore, "the finished dump stays in \(directory.root) for \(Setting.resume); remove it if you start over")
            throw error
        }
    }

    /// pg_dump reads the snapshot with the names Validate resolved, and `--schema`
    /// selects whatever the schema holds in the snapshot: the two must agree, or a
    /// table would be copied but never streamed.
    private func checkTablesUnchanged(in snapshot: String) async throws {
        try await config.sourceEndpoint.withConnection(label: "catalog", stage: .dump) { session in
            try await session.importSnapshot(snapshot)
            try await report.tables.checkUnchanged(inSnapshotOn: session, stage: .dump)
            try await session.execute("COMMIT")
        }
    }

    private func restore(from directory: DumpDirectory, with copy: DumpRestore) async throws -> [String] {
        try store.update { $0.copy.targetTouched = true }
        try await prepareTarget()
        events.info(.restore, "restoring into the target with pg_restore", ["jobs": .int(config.jobs)])
        return try await copy.restore(from: directory)
    }

    /// Creates (or re-creates) the target database, and the schemas of tables selected by `--table`.
    private func prepareTarget() async throws {
        try await TargetDatabase(target: config.targetEndpoint, events: events).prepare(
            exists: report.targetDatabaseExists, dropFirst: config.dropTargetFirst || resumePlan.recreatesTarget,
            terminatingSessions: config.terminateTargetSessions, like: report.sourceDatabase)
        try await createRoles()
        if !config.filter.tables.isEmpty && config.dumpScope != .dataOnly {
            try await createSchemasOfSelectedTables()
        }
        if report.tables.dumpsSchema("public") && config.dumpScope != .dataOnly {
            // `--schema public` makes pg_dump emit CREATE SCHEMA public, which every new database already has:
            // the empty one goes, and the source's comes with its owner and grants. One with objects stays
            // (RESTRICT), and the restore then says what is in the way.
            let target = try await config.targetEndpoint.connect(stage: .restore)
            do {
                try await target.execute("DROP SCHEMA IF EXISTS public")
            } catch let error as PostgresError where error.sqlState == "2BP01" {}
            await target.close()
        }
    }

    /// Refreshes planner statistics on the target unless told not to.
    func analyze() async throws {
        if config.skipAnalyze || config.dumpScope == .schemaOnly {
            events.info(.analyze, "analyze skipped")
        } else {
            events.info(.analyze, "analyzing the target")
            try await Analyze(config: config, tools: report.tools).run()
            events.info(.analyze, "analyzed the target")
        }
    }

    /// `copyRoles`: the roles the restore needs, before it runs.
    private func createRoles() async throws {
        let roles = report.rolesToCreate
        guard !roles.roles.isEmpty else { return }
        let names = roles.roles.map(\.name)
        let passwords = try await config.sourceEndpoint.withConnection(label: "roles", stage: .restore) {
            await RoleCopy.passwords(of: names, on: $0)
        }
        let withoutPassword = try await config.targetEndpoint.withConnection(label: "roles", stage: .restore) {
            try await roles.create(on: $0, passwords: passwords, events: events)
        }
        try store.update { $0.copy.rolesCreated = names }
        events.info(
            .restore, "created \(names.count) role(s) on the target (this tool never drops them): " + names.joined(separator: ", "),
            ["roles_created": .list(names)])
        if !withoutPassword.isEmpty {
            events.warning(
                .restore,
                "login role(s) created without a password, which only a superuser may read on the source: "
                    + withoutPassword.joined(separator: ", ") + "; set one with ALTER ROLE … PASSWORD before they log in",
                ["roles_without_password": .list(withoutPassword)])
        }
    }

    private func createSchemasOfSelectedTables() async throws {
        let target = try await config.targetEndpoint.connect(stage: .restore)
        // The sequences too: `--table` brings one a selected table's default uses, wherever it lives.
        let schemas = Set(report.tables.relations.map(\.schema)).union(report.tables.sequences.map(\.schema))
        try await TableSchemas.create(schemas.sorted(), on: target)
        await target.close()
    }
}
