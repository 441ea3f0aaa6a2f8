import ArgumentParser
import Foundation
import PGDBMigrator
import PostgresClient

/// Which running migration a control command talks to: the one with this state directory, or the one
/// into this target (whose state directory is derived from it as the migration derives it).
struct ControlOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The --state-dir the migration was started with.", valueName: "dir"))
    var stateDir: String?

    @Option(
        help: ArgumentHelp(
            "The migration's target, when it was started without --state-dir. Default: $PG_DBMIGRATOR_TARGET.",
            valueName: "conninfo"))
    var target: String?

    @Flag(help: "Write JSON to stdout instead of text.")
    var json = false

    func validate() throws {
        if stateDir == nil && (target ?? ProcessInfo.processInfo.environment["PG_DBMIGRATOR_TARGET"]) == nil {
            throw ValidationError("name the migration: --state-dir (or --target, as it was started with)")
        }
    }

    func client() throws -> ControlClient {
        if let stateDir { return ControlClient(socketPath: ControlSocket.path(forStateDirectory: stateDir)) }
        let raw = target ?? ProcessInfo.processInfo.environment["PG_DBMIGRATOR_TARGET"] ?? ""
        do {
            return ControlClient(stateDirectory: nil, target: try ConnectionString(raw))
        } catch {
            throw ValidationError("--target is not a valid connection string: \(error.message)")
        }
    }

    /// Runs `body`, turning a failure to reach the migration into its message and exit 1.
    func talk<T>(_ body: (ControlClient) async throws -> T) async throws -> T {
        let renderer = EventRenderer(json: json, verbose: false)
        do {
            return try await body(try client())
        } catch let error as MigrationError {
            renderer.failure(stage: nil, code: error.code, message: Flags.render(error.message), fix: error.fix.map(Flags.render))
            throw ExitCode.failure
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running migration's phase, lag, copy progress and whether it can cut over now.",
        discussion: """
            On a terminal: a view with a lag sparkline of the last minutes and the copy's progress bar; \
            elsewhere (or with --json): the status as JSON. Exit status 0 when the migration answered, 1 when \
            none is running there.
            """)

    @OptionGroup var options: ControlOptions

    @Flag(help: "Redraw every second until the migration ends (terminal view).")
    var watch = false

    func run() async throws {
        let view = !options.json && isatty(STDOUT_FILENO) == 1
        repeat {
            let status = try await options.talk { try await $0.status() }
            if view {
                let screen = StatusView(status: status, width: StatusView.terminalWidth()).render()
                print((watch ? "\u{1B}[H\u{1B}[2J" : "") + screen)
            } else {
                print(String(decoding: try MigrationStatus.encoder.encode(status), as: UTF8.self))
            }
            guard watch, status.result == nil else { return }
            try await Task.sleep(for: .seconds(1))
        } while true
    }
}

struct CutoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cutover",
        abstract: "Cut a running online migration over, as Ctrl+C in its terminal would.",
        discussion: """
            Refused (exit 1, naming the phase) until the target streams: it never stops a copy. Waits for the \
            cutover to finish and exits with the migration's own exit status (0 done, 1 failed); --no-wait \
            returns once it is requested. Asking twice makes one cutover.
            """)

    @OptionGroup var options: ControlOptions

    @Flag(help: "Return once the cutover is requested, without waiting for it to finish.")
    var noWait = false

    func run() async throws {
        try await ControlReplyPrinter(json: options.json, action: "cutover")
            .print(try await options.talk { try await $0.cutover(wait: !noWait) })
    }
}

struct AbortCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "abort",
        abstract: "Stop a running migration, as a second Ctrl+C would.",
        discussion: """
            An online run leaves its slot and subscription in place for --resume or --mode cleanup. Waits for the \
            run to stop and exits with its exit status (130); --no-wait returns at once.
            """)

    @OptionGroup var options: ControlOptions

    @Flag(help: "Return once the abort is requested, without waiting for the run to stop.")
    var noWait = false

    func run() async throws {
        try await ControlReplyPrinter(json: options.json, action: "abort")
            .print(try await options.talk { try await $0.abort(wait: !noWait) })
    }
}

/// Prints what a cutover or abort request got, and exits as the migration did.
struct ControlReplyPrinter {
    var json: Bool
    var action: String

    func print(_ reply: ControlClient.Reply) async throws {
        switch reply {
        case .requested:
            say(["requested": action], text: "\(action) requested")
        case .refused(let why):
            EventRenderer(json: json, verbose: false).failure(
                stage: nil, code: MigrationError.Code(rawValue: "refused"), message: why, fix: nil)
            throw ExitCode.failure
        case .ended(let result):
            if json {
                Swift.print(String(decoding: try MigrationStatus.encoder.encode(result), as: UTF8.self))
            } else {
                var line = "\(result.outcome): \(result.message)"
                if let barrier = result.barrierLSN { line += "; barrier \(barrier)" }
                if let held = result.writeDowntimeSeconds { line += String(format: "; writes held for %.2f s", held) }
                Swift.print(line)
            }
            if result.exitCode != 0 { throw ExitCode(result.exitCode) }
        }
    }

    private func say(_ object: [String: String], text: String) {
        if json, let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
            Swift.print(String(decoding: data, as: UTF8.self))
        } else {
            Swift.print(text)
        }
    }
}
