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
    @Test("CaughtUp fires once, FellBehind when lag climbs back, CaughtUp again after")
    func transitions() {
        var machine = LagStateMachine(threshold: 100)
        #expect(machine.observe(lagBytes: 5000) == nil)
        #expect(machine.observe(lagBytes: 100) == .caughtUp)
        #expect(machine.observe(lagBytes: 0) == nil)
        #expect(machine.observe(lagBytes: 101) == .fellBehind)
        #expect(machine.observe(lagBytes: 500) == nil)
        #expect(machine.observe(lagBytes: 50) == .caughtUp)
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
