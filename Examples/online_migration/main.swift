// An online migration driven through the library, with Ctrl+C wired to its
// control — the shape of a program that embeds pg_dbmigrator.
//
//   swift run online_migration 'postgres://…/source_db' 'postgres://…/target_db'
//
// Press Ctrl+C once the "ready for cutover" line appears (or whenever you
// decide): the migration waits until the target has applied everything the
// source committed, syncs sequences, removes the replication objects and
// exits. A second Ctrl+C aborts and leaves the slot and subscription in place.

import Dispatch
import Foundation
import PGDBMigrator
import PostgresClient

let arguments = CommandLine.arguments.dropFirst()
guard arguments.count == 2 else {
    FileHandle.standardError.write(Data("usage: online_migration SOURCE_CONNINFO TARGET_CONNINFO\n".utf8))
    exit(64)
}

let config: MigrationConfig
do {
    config = MigrationConfig(
        mode: .online,
        source: try ConnectionString(arguments[arguments.startIndex]),
        target: try ConnectionString(arguments[arguments.index(after: arguments.startIndex)]))
} catch {
    FileHandle.standardError.write(Data("invalid connection string: \(error)\n".utf8))
    exit(64)
}

/// One line, written at once (print buffers when the output is a pipe or a file).
@Sendable func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let migrator = Migrator(config: config) { event in
    say("\(event.stage.rawValue): \(event.message)")
}
let run = Task { try await migrator.run() }

// Ctrl+C: cuts over once streaming (before, the control refuses and says why); pressed again, aborts.
signal(SIGINT, SIG_IGN)
let interrupts = DispatchSource.makeSignalSource(signal: SIGINT, queue: .main)
nonisolated(unsafe) var presses = 0
interrupts.setEventHandler {
    presses += 1
    switch presses == 1 ? migrator.control.requestCutover() : .refused("pressed again") {
    case .accepted, .alreadyRequested:
        say("cutover requested; press Ctrl+C again to abort instead")
    case .refused(let why):
        say("aborting: \(why)")
        migrator.control.abort(.signal(SIGINT))
    case .ended:
        break
    }
}
interrupts.resume()

Task {
    do {
        let outcome = try await run.value
        say("done: cut over at \(outcome.barrierLSN?.description ?? "?") in \(outcome.duration)")
        exit(outcome.sequenceFailures.isEmpty ? 0 : 1)
    } catch {
        FileHandle.standardError.write(Data("migration stopped: \(error)\n".utf8))
        exit(1)
    }
}
dispatchMain()
