import PostgresClient
import Testing

@testable import PGDBMigrator

@Suite struct LSNTests {
    @Test func parseAndPrint() {
        #expect(LSN("16/B374D848")?.value == 0x16_B374_D848)
        #expect(LSN("0/0")?.value == 0)
        #expect(LSN("16/B374D848")?.description == "16/B374D848")
        #expect(LSN("nonsense") == nil)
        #expect(LSN("1/2/3") == nil)
        #expect(LSN("/1") == nil)
    }

    @Test func arithmetic() {
        let a = LSN("0/1000")!, b = LSN("1/0")!
        #expect(a < b)
        #expect(b.bytes(since: a) == 0x1_0000_0000 - 0x1000)
        #expect(a.bytes(since: b) == 0)
    }
}

@Suite struct LagStateMachineTests {
    @Test("CaughtUp fires once; FellBehind only after three readings over twice the threshold; CaughtUp again after")
    func transitions() {
        var machine = LagStateMachine(threshold: .bytes(100))
        #expect(machine.observe(lagBytes: 5000, lagSeconds: nil) == nil)
        #expect(machine.observe(lagBytes: 100, lagSeconds: nil) == .caughtUp)
        #expect(machine.observe(lagBytes: 0, lagSeconds: nil) == nil)
        // A wobble around the threshold, even a short spike, is not falling behind.
        for lag: UInt64 in [150, 199, 250, 90, 300, 300, 120] {
            let event = machine.observe(lagBytes: lag, lagSeconds: nil)
            #expect(event == nil)
        }
        #expect(machine.observe(lagBytes: 300, lagSeconds: nil) == nil)
        #expect(machine.observe(lagBytes: 301, lagSeconds: nil) == nil)
        #expect(machine.observe(lagBytes: 500, lagSeconds: nil) == .fellBehind)
        #expect(machine.observe(lagBytes: 500, lagSeconds: nil) == nil)
        #expect(machine.observe(lagBytes: 50, lagSeconds: nil) == .caughtUp)
    }

    @Test("in seconds (the default), bytes do not matter and an unknown time lag changes nothing")
    func seconds() {
        var machine = LagStateMachine(threshold: .seconds(5))
        #expect(machine.observe(lagBytes: 10_000_000, lagSeconds: nil) == nil)
        #expect(machine.observe(lagBytes: 10_000_000, lagSeconds: 2) == .caughtUp)
        for _ in 0..<5 {
            let event = machine.observe(lagBytes: 50_000_000, lagSeconds: 9)
            #expect(event == nil)
        }
        #expect(machine.observe(lagBytes: 0, lagSeconds: 11) == nil)
        #expect(machine.observe(lagBytes: 0, lagSeconds: nil) == nil)
        #expect(machine.observe(lagBytes: 0, lagSeconds: 11) == nil)
        #expect(machine.observe(lagBytes: 0, lagSeconds: 12) == .fellBehind)
    }
}

@Suite struct HeartbeatPaceTests {
    @Test("once caught up: at most one report per interval, and only when the lag changed or a minute passed")
    func quiet() {
        let start = ContinuousClock.now
        var pace = HeartbeatPace(interval: .seconds(5))
        // (lag bytes, caught up, seconds after start) → reported
        let readings: [(UInt64, Bool, Double, Bool)] = [
            (900, false, 0, true), (900, false, 0.1, true),  // every reading until caught up
            (0, true, 1, false),  // the fast poll stays internal
            (0, true, 6, true),  // changed, and the interval passed
            (0, true, 12, false), (0, true, 50, false),  // unchanged
            (0, true, 67, true),  // a minute passed
        ]
        for (lag, caughtUp, after, reported) in readings {
            let decided = pace.shouldReport(lagBytes: lag, caughtUp: caughtUp, now: start + .milliseconds(Int(after * 1000)))
            #expect(decided == reported, "\(lag) bytes at \(after) s")
        }
        var every = HeartbeatPace(interval: .seconds(5), everyReading: true)
        let first = every.shouldReport(lagBytes: 0, caughtUp: true, now: start)
        let second = every.shouldReport(lagBytes: 0, caughtUp: true, now: start + .milliseconds(100))
        #expect(first && second)
    }
}

@Suite struct ApplyHealthTests {
    let start = ContinuousClock.now

    @Test("rising errors without progress fail after the grace period; progress clears them")
    func failing() {
        var health = ApplyHealth(grace: .seconds(30))
        let lsn = LSN("0/100")!
        #expect(health.observe(errors: 0, workerRunning: true, applied: lsn, caughtUp: false, now: start) == .healthy)
        #expect(health.observe(errors: 1, workerRunning: true, applied: lsn, caughtUp: false, now: start + .seconds(5)) == .newErrors(1))
        #expect(health.observe(errors: 1, workerRunning: false, applied: lsn, caughtUp: false, now: start + .seconds(20)) == .healthy)
        #expect(
            health.observe(errors: 2, workerRunning: true, applied: lsn, caughtUp: false, now: start + .seconds(36))
                == .failing(.seconds(31)))

        var recovering = ApplyHealth(grace: .seconds(30))
        _ = recovering.observe(errors: 3, workerRunning: true, applied: lsn, caughtUp: false, now: start)  // baseline: old errors
        #expect(
            recovering.observe(errors: 4, workerRunning: true, applied: lsn, caughtUp: false, now: start + .seconds(1)) == .newErrors(4))
        #expect(
            recovering.observe(errors: 4, workerRunning: true, applied: LSN("0/200")!, caughtUp: false, now: start + .seconds(2))
                == .healthy)
        #expect(
            recovering.observe(errors: 4, workerRunning: true, applied: LSN("0/200")!, caughtUp: false, now: start + .seconds(90))
                == .healthy)
    }

    @Test("a worker that is briefly absent while starting, or an idle caught-up source, is not a failure")
    func notFailures() {
        var health = ApplyHealth(grace: .seconds(30))
        let lsn = LSN("0/100")!
        #expect(health.observe(errors: nil, workerRunning: false, applied: lsn, caughtUp: false, now: start) == .healthy)
        #expect(health.observe(errors: nil, workerRunning: true, applied: lsn, caughtUp: true, now: start + .seconds(10)) == .healthy)
        #expect(health.observe(errors: nil, workerRunning: true, applied: lsn, caughtUp: true, now: start + .seconds(100)) == .healthy)
    }
}
