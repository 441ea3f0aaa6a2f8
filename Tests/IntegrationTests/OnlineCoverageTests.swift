import Foundation
import PGDBMigrator
import PostgresClient
import Testing

/// What is copied is exactly what is streamed, verified and synced: one table
/// set, resolved with pg_dump's pattern rules, and checked again before Complete.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct OnlineCoverageTests {
    /// `public.t1`, `other.t1` (same name, another schema, not on the search_path), `public.gen`, `public.t2`.
    static func source() async throws -> String {
        try await OnlinePreflightTests.smallSource(
            """
            CREATE SCHEMA other;
            CREATE TABLE public.t1 (id int PRIMARY KEY, v text); INSERT INTO public.t1 SELECT g, 'p' FROM generate_series(1, 20) g;
            CREATE TABLE other.t1 (id int PRIMARY KEY, v text); INSERT INTO other.t1 SELECT g, 'o' FROM generate_series(1, 20) g;
            CREATE TABLE public.gen (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
            INSERT INTO public.gen (v) SELECT 'g' FROM generate_series(1, 5);
            CREATE TABLE public.t2 (id int PRIMARY KEY, v text); INSERT INTO public.t2 VALUES (1, 'x');
            """)
    }

    @Test("an unqualified --exclude-table leaves out only the table the search path shows; the other schema's is streamed")
    func unqualifiedExclusion() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("exclude_t1")
        let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
            $0.filter = ObjectFilter(excludeTables: ["t1"])
        }
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        let writer = try await source.connect(database: database)
        try await writer.execute("UPDATE other.t1 SET v = 'changed while streaming'; INSERT INTO other.t1 VALUES (100, 'new')")
        migrator.cutoverHandle.request()
        _ = try await run.value

        let copied = try await Fingerprint.of(target, database: targetDatabase)
        var expected = try await Fingerprint.of(source, database: database)
        expected.tables["public.t1"] = nil
        #expect(copied.tables["other.t1"] == expected.tables["other.t1"], "other.t1's later changes were streamed")
        #expect(copied.tables == expected.tables, "\(copied.differences(from: expected))")
    }

    @Test("regular-expression patterns mean what pg_dump makes of them; verify compares what was copied")
    func regexPattern() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("regex_copy")
        let arguments = [
            "--source", source.url(database: database), "--target", target.url(database: targetDatabase),
            "--table", "public.(t1|gen)", "--state-dir", DestructiveMistakesTests.stateDirectory(),
        ]
        let result = try await CLI.run(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("2 table(s) match"), "\(result.stderr)")
        let copied = try await Fingerprint.of(target, database: targetDatabase)
        #expect(Set(copied.tables.keys) == ["public.t1", "public.gen"])
        // The identity sequence of a selected table is part of the set: verify compares it.
        let verify = try await CLI.run(
            [
                "--mode", "verify", "--source", source.url(database: database), "--target", target.url(database: targetDatabase),
                "--table", "public.(t1|gen)",
            ])
        #expect(verify.status == 0, "\(verify.stderr)")
    }

    @Test("a pattern that matches nothing is an error, in every mode that resolves one")
    func unmatchedPattern() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await Self.source()
        let targetDatabase = SharedClusters.uniqueName("typo")
        for mode in ["offline", "online", "verify"] {
            let result = try await CLI.run(
                [
                    "--mode", mode, "--source", source.url(database: database), "--target", target.url(database: targetDatabase),
                    "--table", "public.typo_tbl", "--state-dir", DestructiveMistakesTests.stateDirectory(), "--json",
                ])
            #expect(result.status == 1, "\(mode): \(result.stderr)")
            #expect(result.failureCode == "table_set", "\(result.stdout)")
            #expect(
                result.stderr.contains("these patterns match nothing on the source: --table public.typo_tbl"), "\(mode): \(result.stderr)")
        }
        // Dotted names as pg_dump reads them: this database's name may lead; another's, or a fourth part, may not.
        let cases = [
            ("\(database).public.t1", nil), ("otherdb.public.t1", "cross-database references are not implemented"),
            ("a.b.c.d", "improper qualified name (too many dotted names)"),
        ]
        for (pattern, refusal) in cases {
            let result = try await CLI.run(
                [
                    "--mode", "verify", "--source", source.url(database: database), "--target", source.url(database: database + "_x"),
                    "--table", pattern,
                ])
            if let refusal {
                #expect(result.status == 1 && result.stderr.contains(refusal), "\(pattern): \(result.stderr)")
            } else {
                #expect(
                    !result.stderr.contains("cross-database") && !result.stderr.contains("match nothing"), "\(pattern): \(result.stderr)")
            }
        }
        let admin = try await target.connect()
        #expect(try await admin.scalar("SELECT count(*) FROM pg_database WHERE datname = $1", [targetDatabase]) == "0")
    }

    @Test("--freeze-source-at-cutover is refused at Validate when the source role could not freeze, naming what it lacks")
    func freezePrivileges() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.source()
        let role = SharedClusters.uniqueName("freezer")
        let admin = try await source.connect(database: database)
        try await admin.execute(
            """
            CREATE ROLE \(SQL.identifier(role)) LOGIN REPLICATION PASSWORD 'freezer-pw';
            GRANT SELECT ON ALL TABLES IN SCHEMA public, other TO \(SQL.identifier(role));
            GRANT USAGE ON SCHEMA other TO \(SQL.identifier(role));
            """)
        var config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("frozen_out")) {
            $0.online.freezeSourceAtCutover = true
            $0.noOwner = true
            $0.noACL = true
        }
        config.source = try ConnectionString(source.url(database: database, user: role, password: "freezer-pw"))
        // The publication is the superuser's: this role only reads through it.
        try await admin.execute("CREATE PUBLICATION \(SQL.identifier(config.online.publication)) FOR ALL TABLES")
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
        let message = error?.message ?? ""
        #expect(error?.stage == .validate)
        #expect(
            message.contains("\(MigrationConfig.Setting.freezeSourceAtCutover) needs") && message.contains("ownership of the database")
                && message.contains("CREATE on the database") && message.contains("TRIGGER on"), "\(message)")
        #expect(try await admin.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName]) == "0")
        try await admin.execute("DROP PUBLICATION \(SQL.identifier(config.online.publication))")
    }

    @Test("an existing publication that does not carry exactly the set's changes is refused at Validate, naming why")
    func existingPublicationCoverage() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.source()
        let setup = try await source.connect(database: database)
        try await setup.execute(
            "CREATE TABLE public.parted (id int PRIMARY KEY) PARTITION BY RANGE (id); "
                + "CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (100)")
        let everything = "public.t1, other.t1, public.gen, public.t2, public.items, public.parted_1"
        let cases: [(publication: String, filter: ObjectFilter, expect: String)] = [
            ("FOR TABLE public.t1, public.gen, public.t2, public.items, public.parted_1", ObjectFilter(), "it does not publish other.t1"),
            ("FOR ALL TABLES WITH (publish = 'insert, update')", ObjectFilter(), "it does not publish delete, truncate"),
            (
                "FOR TABLE public.t1 WHERE (id > 10), other.t1, public.gen, public.t2, public.items, public.parted_1", ObjectFilter(),
                "it has a row filter on public.t1"
            ),
            (
                "FOR TABLE public.t1 (id), other.t1, public.gen, public.t2, public.items, public.parted_1", ObjectFilter(),
                "it has a column list on public.t1"
            ),
            ("FOR ALL TABLES", ObjectFilter(excludeSchemas: ["other"]), "it publishes other.t1, which the migration does not carry"),
            (
                "FOR TABLE public.parted, \(everything) WITH (publish_via_partition_root = true)",
                ObjectFilter(excludeTables: ["public.parted"]),
                "it publishes through the partition root public.parted (publish_via_partition_root), which the migration does not carry"
            ),
        ]
        for (definition, filter, expect) in cases {
            let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("covered")) {
                $0.filter = filter
            }
            try await setup.execute("CREATE PUBLICATION \(SQL.identifier(config.online.publication)) \(definition)")
            let error = await #expect(throws: MigrationError.self) { try await Migrator(config: config).run() }
            #expect(error?.stage == .validate)
            #expect(error?.message.contains(expect) == true, "\(definition): \(error?.message ?? "")")
            #expect(
                try await setup.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [config.online.slotName]) == "0")
            try await setup.execute("DROP PUBLICATION \(SQL.identifier(config.online.publication))")
        }
        try await setup.execute("DROP TABLE public.parted")
    }

    /// A source and a target for one test alone (the caller stops them), the source database `app` holding `public.t2`.
    static func ownServers(_ name: String) async throws -> (source: TestCluster, target: TestCluster, database: String) {
        let source = try await TestCluster.start(name: name + "-source")
        let target = try await TestCluster.start(name: name + "-target")
        let database = try await source.createDatabase("app")
        try await source.connect(database: database).execute(
            "CREATE TABLE public.t2 (id int PRIMARY KEY, v text); INSERT INTO public.t2 VALUES (1, 'x')")
        return (source, target, database)
    }

    @Test("creating the slot behind a writing transaction: reported every 10 s naming it, given up after --lock-timeout-secs")
    func slotWaitIsNeverSilent() async throws {
        // Servers of its own: a transaction held open for 12 s on a shared source would hold up every other test's slot.
        let (source, target, database) = try await Self.ownServers("slot-wait")
        defer {
            source.stop()
            target.stop()
        }
        let writer = try await Connection.connect(
            try source.connectionString(database: database).setting("application_name", to: "long-writer"), label: "writer")
        try await writer.execute("BEGIN; INSERT INTO public.t2 VALUES (50, 'open')")
        let names = OnlineAbortTests.Names()
        let arguments = try await OnlineAbortTests.arguments(database, "never", names, on: (source, target))
        let result = try await CLI.start(
            arguments + ["--lock-timeout-secs", "12", "--state-dir", DestructiveMistakesTests.stateDirectory()]
        )
        .wait(timeout: 90)
        try await writer.execute("ROLLBACK")
        #expect(result.status == 1, "\(result.stderr)")
        #expect(
            result.stderr.contains("waiting 10 s for transactions that were writing when it began to end (creating the replication slot)"),
            "\(result.stderr)")
        #expect(
            result.stderr.contains("gave up after") && result.stderr.contains("long-writer")
                && result.stderr.contains("INSERT INTO public.t2"), "\(result.stderr)")
        #expect(try await writer.scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", [names.slot]) == "0")
    }

    @Test("pg_restore behind a target session's lock: given up after --lock-timeout-secs, naming the session and its query")
    func restoreWaitIsNeverSilent() async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource("COMMENT ON SCHEMA public IS 'the application'")
        let targetDatabase = try await target.createDatabase(SharedClusters.uniqueName("held_target"))
        // pg_restore's pre-data pass comments on the schema; this uncommitted comment holds the schema's lock.
        let holder = try await Connection.connect(
            try target.connectionString(database: targetDatabase).setting("application_name", to: "schema-holder"), label: "holder")
        try await holder.execute("BEGIN; COMMENT ON SCHEMA public IS 'held'")
        let result = try await CLI.start([
            "--source", source.url(database: database), "--target", target.url(database: targetDatabase),
            "--lock-timeout-secs", "3", "--state-dir", DestructiveMistakesTests.stateDirectory(), "--json",
        ])
        .wait(timeout: 90)
        try await holder.execute("ROLLBACK")
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.failureCode == "lock_timeout", "\(result.stdout)")
        #expect(
            result.stderr.contains("gave up after") && result.stderr.contains("restoring the pre-data section with pg_restore")
                && result.stderr.contains("schema-holder") && result.stderr.contains("COMMENT ON SCHEMA public"), "\(result.stderr)")
    }

    @Test("the cutover's apply behind a target session's lock: given up after --lock-timeout-secs, naming the session")
    func applyWaitIsNeverSilent() async throws {
        // Servers of its own: with a 3 s lock timeout, another test's prepared transaction on a shared source
        // would hold up the slot's creation past it.
        let (source, target, database) = try await Self.ownServers("held-apply")
        defer {
            source.stop()
            target.stop()
        }
        let targetDatabase = "held_apply"
        var config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) {
            $0.lockTimeout = .seconds(3)
        }
        config.source = try source.connectionString(database: database)
        config.target = try target.connectionString(database: targetDatabase)
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        let holder = try await Connection.connect(
            try target.connectionString(database: targetDatabase).setting("application_name", to: "report-job"), label: "holder")
        try await holder.execute("BEGIN; LOCK TABLE public.t2 IN ACCESS EXCLUSIVE MODE")
        let writer = try await source.connect(database: database)
        try await writer.execute("UPDATE public.t2 SET v = 'behind the lock'")
        migrator.cutoverHandle.request()
        let error = await #expect(throws: MigrationError.self) { try await run.value }
        try await holder.execute("ROLLBACK")
        #expect(error?.code == .lockTimeout)
        #expect(
            error?.message.contains("applying up to the barrier") == true && error?.message.contains("report-job") == true
                && error?.message.contains("RowExclusiveLock lock on") == true, "\(error?.message ?? "")")
    }

    @Test("--resume refuses when the tables to migrate changed since the interrupted run began")
    func resumeAfterSchemaChange() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.source()
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("changed")) {
            $0.stateDirectory = DestructiveMistakesTests.stateDirectory()
        }
        let (_, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        run.cancel()
        await #expect(throws: MigrationCancelled.self) { try await run.value }
        // FOR ALL TABLES would publish it from now on, but it was never copied.
        let writer = try await source.connect(database: database)
        try await writer.execute("CREATE TABLE public.late (id int PRIMARY KEY); INSERT INTO public.late VALUES (1)")
        var resume = config
        resume.resume = true
        let error = await #expect(throws: MigrationError.self) { try await Migrator(config: resume).run() }
        #expect(
            error?.message.contains("the tables to migrate changed since the interrupted run began: public.late new") == true,
            "\(error?.message ?? "")")
        try await writer.execute("DROP TABLE public.late")
        try await OnlineMigrationTests.removeReplicationObjects(config)
    }

    @Test("a prepared transaction on the source stops a frozen cutover before the barrier, named; nothing is dropped")
    func preparedTransactionAtFreeze() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.source()
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("prepared")) {
            $0.online.freezeSourceAtCutover = true
        }
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        let writer = try await source.connect(database: database)
        let gid = SharedClusters.uniqueName("px")
        try await writer.execute("BEGIN; INSERT INTO public.t2 VALUES (2, 'prepared'); PREPARE TRANSACTION \(SQL.literal(gid))")
        migrator.cutoverHandle.request()
        let error = await #expect(throws: MigrationError.self) { try await run.value }
        // (The freeze ended the writer's session; a prepared transaction outlives it, and would hold up every later slot.)
        let after = try await source.connect(database: database)
        try await after.execute("ROLLBACK PREPARED \(SQL.literal(gid))")
        #expect(
            error?.message.contains("prepared transactions on the source") == true && error?.message.contains(gid) == true,
            "\(error?.message ?? "")")
        // The abort undid the freeze: writes are accepted again, with no trigger left behind.
        try await after.execute("INSERT INTO public.t2 VALUES (3, 'after the abort')")
        #expect(try await after.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgdbmigrator_freeze'") == "0")
        try await OnlineMigrationTests.removeReplicationObjects(config)
    }

    @Test("a table taken out of the publication while streaming ends the run with an error at cutover, not Complete")
    func publicationShrunkMidRun() async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.source()
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("shrunk")) {
            $0.filter = ObjectFilter(excludeSchemas: ["other"])
        }
        let events = EventLog()
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: events)
        let writer = try await source.connect(database: database)
        try await writer.execute("ALTER PUBLICATION \(SQL.identifier(config.online.publication)) DROP TABLE public.t2")
        try await writer.execute("UPDATE public.t2 SET v = 'lost'")
        migrator.cutoverHandle.request()
        let error = await #expect(throws: MigrationError.self) { try await run.value }
        #expect(error?.stage == .cutover)
        #expect(error?.message.contains("it does not publish public.t2") == true, "\(error?.message ?? "")")
        #expect(!events.stages.contains(.complete))
        let objects = try await OnlineMigrationTests.replicationObjects(config)
        #expect(objects.slot && objects.subscription == "false", "nothing dropped; the subscription disabled")
        try await OnlineMigrationTests.removeReplicationObjects(config)
    }

    @Test(
        "a table created between Validate and the slot's snapshot stops the copy, whichever method reads the snapshot",
        arguments: MigrationConfig.CopyMethod.allCases)
    func tableCreatedBeforeTheSnapshot(method: MigrationConfig.CopyMethod) async throws {
        let (source, _) = try await SharedClusters.get()
        let database = try await Self.source()
        let config = try await OnlineMigrationTests.config(source: database, target: SharedClusters.uniqueName("late_table")) {
            $0.filter = ObjectFilter(schemas: ["public"])
            $0.copyMethod = method
        }
        // Uncommitted, the table is invisible to Validate; the slot waits for this transaction, so its snapshot has it.
        let writer = try await source.connect(database: database)
        try await writer.execute("BEGIN; CREATE TABLE public.late (id int PRIMARY KEY); INSERT INTO public.late VALUES (1)")
        let events = EventLog()
        let run = Task { try await Migrator(config: config, onEvent: events.record).run() }
        while !events.stages.contains(.prepareSnapshot) { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: .seconds(1))
        try await writer.execute("COMMIT")
        let error = await #expect(throws: MigrationError.self) { try await run.value }
        #expect(error?.stage == .dump)
        #expect(
            error?.message.contains("the tables to migrate changed between Validate and the snapshot") == true
                && error?.message.contains("public.late new") == true, "\(error?.message ?? "")")
        #expect(!events.stages.contains(.streamApply), "nothing was streamed")
        try await writer.execute("DROP TABLE public.late")
        try await OnlineMigrationTests.removeReplicationObjects(config)
    }

    @Test(
        "the cutover syncs the sequences the filter brings: owned, default-only with --table, free-standing under --schema",
        arguments: [
            (ObjectFilter(schemas: ["a"]), Set(["a.free", "a.t_id_seq"])),
            (ObjectFilter(tables: ["b.u"]), Set(["a.free"])),
        ])
    func sequencesOfTheFilter(filter: ObjectFilter, synced: Set<String>) async throws {
        let (source, target) = try await SharedClusters.get()
        let database = try await OnlinePreflightTests.smallSource(
            """
            CREATE SCHEMA a; CREATE SCHEMA b; CREATE SEQUENCE a.free; CREATE SEQUENCE b.loose;
            CREATE TABLE a.t (id serial PRIMARY KEY, v text); INSERT INTO a.t (v) VALUES ('t');
            CREATE TABLE b.u (id bigint PRIMARY KEY DEFAULT nextval('a.free'), v text); INSERT INTO b.u (v) VALUES ('u');
            """)
        let targetDatabase = SharedClusters.uniqueName("filtered_sequences")
        let config = try await OnlineMigrationTests.config(source: database, target: targetDatabase) { $0.filter = filter }
        let (migrator, run) = try await OnlineMigrationTests.startStreaming(config, events: EventLog())
        let writer = try await source.connect(database: database)
        try await writer.execute(
            "INSERT INTO a.t (v) SELECT 'later' FROM generate_series(1, 40); INSERT INTO b.u (v) SELECT 'later' FROM generate_series(1, 30); "
                + "SELECT setval('b.loose', 500)")
        migrator.cutoverHandle.request()
        _ = try await run.value

        let copied = try await target.connect(database: targetDatabase)
        for sequence in ["a.free", "a.t_id_seq", "b.loose"] {
            let value =
                "SELECT CASE WHEN to_regclass($1) IS NULL THEN 'absent' ELSE "
                + "(SELECT last_value::text FROM pg_sequences WHERE schemaname || '.' || sequencename = $1) END"
            let onTarget = try await copied.scalar(value, [sequence])
            if synced.contains(sequence) {
                #expect(try await onTarget == writer.scalar(value, [sequence]), "\(sequence) synced")
                #expect(onTarget != "absent" && onTarget != nil)
            } else {
                #expect(onTarget == "absent", "\(sequence) is outside the filter")
            }
        }
        try await OnlineMigrationTests.removeReplicationObjects(config)
    }
}
