import PostgresClient
import Testing

@testable import PGDBMigrator

/// What `--resume` does, decided from the recorded state alone: every row of the table.
@Suite struct ResumePlanTests {
    /// A recorded state with the given progress flags.
    func state(
        touched: Bool = false, prepared: Bool = false, slot: Bool = false, subscription: Bool = false, barrier: String? = nil
    ) -> RunState {
        var state = RunState(settings: [:])
        state.copy.targetTouched = touched
        state.copy.targetPrepared = prepared
        state.online.slotCreated = slot
        state.online.subscriptionCreated = subscription
        state.online.cutoverBarrier = barrier
        return state
    }

    @Test("without --resume every run is fresh, whatever is recorded")
    func notAsked() {
        for mode in MigrationConfig.Mode.allCases {
            let recorded = state(touched: true, prepared: true, slot: true, subscription: true, barrier: "0/10")
            #expect(ResumePlan.decide(resume: false, mode: mode, recorded: recorded) == .fresh)
        }
    }

    @Test("offline: schema in place → continue; schema half made → redo the target; target untouched → start the copy again")
    func offline() {
        let rows: [(RunState, ResumePlan)] = [
            (state(touched: true, prepared: true), .continueCopy),
            (state(touched: true), .redoTarget),
            (state(), .startCopyAgain),
        ]
        for (recorded, expected) in rows {
            #expect(ResumePlan.decide(resume: true, mode: .offline, recorded: recorded) == expected)
        }
    }

    @Test("online: barrier recorded → teardown only; subscription → re-attach; otherwise the copy restarts from a new slot")
    func online() {
        let rows: [(RunState, ResumePlan)] = [
            (
                state(touched: true, prepared: true, slot: true, subscription: true, barrier: "1/2A"),
                .finishTeardown(barrier: LSN("1/2A")!)
            ),
            (state(touched: true, prepared: true, slot: true, subscription: true), .reattach),
            (state(touched: true, prepared: true, slot: true), .restartOnlineCopy(recreateTarget: true)),
            (state(touched: true, slot: true), .restartOnlineCopy(recreateTarget: true)),
            // Died before touching the target: nothing there is ours to drop.
            (state(slot: true), .restartOnlineCopy(recreateTarget: false)),
            (state(), .restartOnlineCopy(recreateTarget: false)),
        ]
        for (recorded, expected) in rows {
            #expect(ResumePlan.decide(resume: true, mode: .online, recorded: recorded) == expected)
        }
    }

    @Test("what each plan means for the phases")
    func consequences() {
        #expect(ResumePlan.redoTarget.recreatesTarget && ResumePlan.restartOnlineCopy(recreateTarget: true).recreatesTarget)
        #expect(!ResumePlan.continueCopy.recreatesTarget && !ResumePlan.fresh.recreatesTarget)
        #expect(!ResumePlan.restartOnlineCopy(recreateTarget: false).recreatesTarget)
        #expect(ResumePlan.continueCopy.targetHoldsRecordedCopy && ResumePlan.reattach.targetHoldsRecordedCopy)
        #expect(!ResumePlan.startCopyAgain.targetHoldsRecordedCopy && !ResumePlan.redoTarget.targetHoldsRecordedCopy)
        // Online never restores an old dump: the stream must start exactly where the dump did.
        #expect(!ResumePlan.restartOnlineCopy(recreateTarget: true).reusesFinishedDump)
        #expect(ResumePlan.startCopyAgain.reusesFinishedDump && ResumePlan.continueCopy.reusesFinishedDump)
        #expect(!ResumePlan.fresh.reclaimsDumpDirectory && ResumePlan.redoTarget.reclaimsDumpDirectory)
        #expect(ResumePlan.continueCopy.continuesCopy && !ResumePlan.startCopyAgain.continuesCopy)
    }
}
