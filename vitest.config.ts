import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "unit",
          include: ["controller/**/*.test.ts", "node-agent/**/*.test.ts", "cli/**/*.test.ts", "frontend/**/*.test.ts", "lib/**/*.test.ts", "test/unit/**/*.test.ts", "test/guest/**/*-parse.test.ts"],
          testTimeout: 10_000,
        },
      },
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts", "test/guest/**/*.test.ts"],
          exclude: [...configDefaults.exclude, "test/guest/**/*-parse.test.ts"],
          testTimeout: 120_000,
          hookTimeout: 120_000,
          fileParallelism: false,
          globalSetup: ["test/harness/global-setup.ts"],
        },
      },
    ],
  },
});
