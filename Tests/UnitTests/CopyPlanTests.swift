import Testing

@testable import PGDBMigrator

@Suite struct CopyPlanTests {
    static func table(bytes: Int, blocks: Int = 1000, key: String? = nil) -> CatalogTable {
        CatalogTable(
            oid: "16384", name: QualifiedName(schema: "public", name: "big"), bytes: bytes, blocks: blocks, columns: "\"id\", \"v\"",
            integerKey: key)
    }

    @Test("small tables are copied whole, with FREEZE-able plain COPY")
    func whole() {
        let parts = CopyPlan(splitBytes: 100).parts(of: Self.table(bytes: 100, key: "\"id\""), keyBounds: (1, 1000))
        #expect(parts.count == 1)
        #expect(parts[0].isWholeTable)
        #expect(parts[0].copyOutSQL == "COPY \"public\".\"big\" (\"id\", \"v\") TO STDOUT")
    }

    @Test("key ranges cover every key once, open at both ends")
    func keyRanges() {
        let parts = CopyPlan(splitBytes: 100).parts(of: Self.table(bytes: 350, key: "\"id\""), keyBounds: (1, 1000))
        #expect(parts.count == 4)
        #expect(parts.first?.range == .key(column: "\"id\"", from: nil, to: 250))
        #expect(parts.last?.range == .key(column: "\"id\"", from: 748, to: nil))
        for (left, right) in zip(parts, parts.dropFirst()) {
            guard case .key(_, _, let to) = left.range, case .key(_, let from, _) = right.range else {
                Issue.record("not key ranges")
                return
            }
            #expect(to == from)
        }
        #expect(
            parts[1].copyOutSQL == "COPY (SELECT \"id\", \"v\" FROM ONLY \"public\".\"big\" WHERE \"id\" >= 250 AND \"id\" < 499) TO STDOUT"
        )
    }

    @Test("a key span narrower than the part count gives fewer parts, never an empty condition")
    func narrowKeys() {
        let plan = CopyPlan(splitBytes: 10)
        #expect(plan.parts(of: Self.table(bytes: 1000, key: "\"id\""), keyBounds: (5, 5)).count == 1)
        #expect(plan.parts(of: Self.table(bytes: 1000, key: "\"id\""), keyBounds: (5, 8)).count == 3)
        #expect(plan.parts(of: Self.table(bytes: 1000, key: "\"id\""), keyBounds: (Int64.min, Int64.max)).count == 1)
    }

    @Test("without a key, block ranges by ctid, open at both ends")
    func blockRanges() {
        let parts = CopyPlan(splitBytes: 100).parts(of: Self.table(bytes: 300, blocks: 90), keyBounds: nil)
        #expect(parts.map(\.range) == [.blocks(from: nil, to: 30), .blocks(from: 30, to: 60), .blocks(from: 60, to: nil)])
        #expect(parts[1].range?.condition == "ctid >= '(30,0)'::tid AND ctid < '(60,0)'::tid")
        #expect(CopyPlan(splitBytes: 100).parts(of: Self.table(bytes: 300, blocks: 1), keyBounds: nil).count == 1)
        // Before PostgreSQL 14 (no TID range scans) a table without a key is copied whole.
        let whole = CopyPlan(splitBytes: 100, blockRanges: false).parts(of: Self.table(bytes: 300, blocks: 90), keyBounds: nil)
        #expect(whole.count == 1 && whole[0].isWholeTable)
        #expect(
            CopyPlan(splitBytes: 100, blockRanges: false).parts(of: Self.table(bytes: 300, key: "\"id\""), keyBounds: (1, 900)).count == 3)
    }

    @Test("parts are capped, ordered largest first")
    func ordering() {
        #expect(CopyPlan(splitBytes: 1).partCount(bytes: 1_000_000) == 64)
        #expect(CopyPlan(splitBytes: 0).partCount(bytes: 1_000_000) == 1)
        let small = CopyPart(table: Self.table(bytes: 5), index: 0, count: 1, range: nil, bytes: 5)
        let large = CopyPart(table: Self.table(bytes: 50), index: 0, count: 1, range: nil, bytes: 50)
        #expect(CopyPlan.ordered([small, large]) == [large, small])
    }
}

@Suite struct RestoreListTests {
    @Test("the entries left out are found by catalog and oid; comments by their tag")
    func excluding() {
        let lines = [
            ";",
            "3401; 1259 16420 INDEX public accounts_bid_idx postgres",
            "3402; 2606 16412 CONSTRAINT public accounts accounts_pkey postgres",
            "3403; 2606 16499 FK CONSTRAINT public history history_aid_fkey postgres",
            "3404; 1259 16430 INDEX public other_idx postgres",
            "3405; 0 0 COMMENT - INDEX accounts_bid_idx postgres",
            "3406; 2606 16420 CONSTRAINT public t t_check postgres",
            "3347; 6104 16445 PUBLICATION - my pub postgres",
            "3348; 6104 16448 PUBLICATION - ours postgres",
            "3362; 0 0 COMMENT - PUBLICATION ours postgres",
            "3363; 0 0 COMMENT - PUBLICATION ours2 postgres",
            "3350; 6106 16446 PUBLICATION TABLE public my pub t1 postgres",
            "3352; 6106 16449 PUBLICATION TABLE public ours t1 postgres",
        ]
        let exclusions = RestoreList.Exclusions(
            entries: [
                .index("16420"), .constraint("16412"), .index("16430x"), .init(catalog: "6104", oid: "16448"),
                .init(catalog: "6106", oid: "16449"),
            ],
            commentTags: ["PUBLICATION ours"])
        #expect(
            RestoreList(lines: lines).excluding(exclusions) == [
                ";",
                ";3401; 1259 16420 INDEX public accounts_bid_idx postgres",
                ";3402; 2606 16412 CONSTRAINT public accounts accounts_pkey postgres",
                "3403; 2606 16499 FK CONSTRAINT public history history_aid_fkey postgres",
                "3404; 1259 16430 INDEX public other_idx postgres",
                "3405; 0 0 COMMENT - INDEX accounts_bid_idx postgres",
                "3406; 2606 16420 CONSTRAINT public t t_check postgres",
                "3347; 6104 16445 PUBLICATION - my pub postgres",
                ";3348; 6104 16448 PUBLICATION - ours postgres",
                ";3362; 0 0 COMMENT - PUBLICATION ours postgres",
                "3363; 0 0 COMMENT - PUBLICATION ours2 postgres",
                "3350; 6106 16446 PUBLICATION TABLE public my pub t1 postgres",
                ";3352; 6106 16449 PUBLICATION TABLE public ours t1 postgres",
            ])
    }
}
