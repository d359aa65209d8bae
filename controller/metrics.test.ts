import { describe, expect, it } from "vitest";
import { renderMetrics } from "./metrics.js";

describe("Prometheus text format", () => {
  it("writes HELP, TYPE and one line per sample, with labels escaped", () => {
    const text = renderMetrics([
      { name: "stowage_pool_used_bytes", help: "In use.", type: "gauge", samples: [{ labels: { node: "n1", pool: 'a"b\\c' }, value: 42 }] },
      { name: "stowage_controller_leader", help: "Leads.", type: "gauge", samples: [{ value: 1 }] },
      { name: "x", help: "line\nbreak", type: "counter", samples: [{ value: NaN }, { labels: { l: "v\n" }, value: Infinity }] },
    ]);
    expect(text).toBe(
      "# HELP stowage_pool_used_bytes In use.\n# TYPE stowage_pool_used_bytes gauge\n" +
        'stowage_pool_used_bytes{node="n1",pool="a\\"b\\\\c"} 42\n' +
        "# HELP stowage_controller_leader Leads.\n# TYPE stowage_controller_leader gauge\nstowage_controller_leader 1\n" +
        '# HELP x line\\nbreak\n# TYPE x counter\nx NaN\nx{l="v\\n"} +Inf\n',
    );
  });
});
