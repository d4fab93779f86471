"""One Chrome/Perfetto timeline for a whole model run: each offloaded call is a process (named by its
site) whose unit tracks start where the previous call ended, since calls run one after another on the
accelerator."""

from __future__ import annotations


def merged_trace(run_result) -> dict:
    events, offset_us = [], 0.0
    for i, call in enumerate(run_result.calls):
        trace = call.stats.get("trace")
        if trace is None:
            raise ValueError("the run recorded no trace; run with trace enabled")
        events.append({"name": "process_name", "ph": "M", "pid": i, "args": {"name": f"call {i}: {call.site}"}})
        end = offset_us
        for e in trace:
            if e.get("ph") == "M":
                if e["name"] == "thread_name":
                    events.append(dict(e, pid=i))
                continue
            events.append(dict(e, pid=i, ts=e["ts"] + offset_us))
            end = max(end, e["ts"] + e["dur"] + offset_us)
        offset_us = end
    return {"traceEvents": events, "displayTimeUnit": "ns"}
