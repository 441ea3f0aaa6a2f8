// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "pg_dbmigrator",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "pg_dbmigrator", targets: ["pg_dbmigrator"]),
        .library(name: "PGDBMigrator", targets: ["PGDBMigrator"]),
        .library(name: "PostgresClient", targets: ["PostgresClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // The control socket and --listen: a small HTTP server and client with no dependencies of its own.
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
        // GET /metrics in Prometheus' text format.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"]), .brew(["libpq"])]
        ),
        .target(name: "PostgresClient", dependencies: ["CLibPQ"]),
        .target(
            name: "PGDBMigrator",
            dependencies: [
                "PostgresClient", .product(name: "Logging", package: "swift-log"),
                .product(name: "FlyingFox", package: "FlyingFox"), .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "pg_dbmigrator",
            dependencies: [
                "PGDBMigrator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "online_migration", dependencies: ["PGDBMigrator", "PostgresClient"], path: "Examples/online_migration"),
        .testTarget(name: "UnitTests", dependencies: ["PostgresClient", "PGDBMigrator"]),
        .testTarget(name: "IntegrationTests", dependencies: ["PGDBMigrator", "PostgresClient"]),
    ],
    swiftLanguageModes: [.v6]
)
