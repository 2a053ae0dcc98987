"""math-verify in a killable child process (started by rewards/math.py; one JSON request per line).

math-verify's own timeouts use SIGALRM, which raises off the main thread and cancels outer alarms, so
they are disabled here and the parent enforces the deadline by killing this process instead. An
address-space limit turns `10^{10^{10^{10}}}`-style blow-ups into a quick MemoryError.
"""

import ctypes
import json
import logging
import resource
import signal
import sys


def main() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the scorer
    memory_mb = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    logging.disable(logging.CRITICAL)  # "timeout is disabled" warnings on every call
    sys.setrecursionlimit(10_000)
    from math_verify import parse, verify

    golds: dict[str, list | None] = {}

    def parse_gold(g: str) -> list | None:
        if g not in golds:
            if len(golds) > 20_000:
                golds.clear()
            parsed = parse(f"${g}$", parsing_timeout=None)
            # Only a sympy result counts: math-verify falls back to the raw string for text it cannot
            # parse, and comparing two such strings is how a broken gold answer scored 1.0.
            golds[g] = parsed if parsed and not isinstance(parsed[0], str) else None
        return golds[g]

    for warm in ("1", "\\frac{\\sqrt{2}}{2}", "2\\pi", "x^2+1", "[1,2]", "(1,2)", "x=3", "\\{1,2\\}"):
        verify(parse(f"${warm}$", parsing_timeout=None), parse(f"${warm}$", parsing_timeout=None), timeout_seconds=None)
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            gold = parse_gold(req["gold"])
            if req.get("pred") is None:
                resp = {"gold_ok": gold is not None}
            elif gold is None:
                resp = {"v": None}
            else:
                pred = parse(f"${req['pred']}$", parsing_timeout=None)
                resp = {"v": 1.0 if verify(gold, pred, timeout_seconds=None) else 0.0}
        except MemoryError:
            resp = {"v": 0.0, "error": "memory"} if req.get("pred") is not None else {"gold_ok": False}
        except Exception as e:  # math-verify bugs on odd input: the completion did not verify
            resp = {"v": 0.0, "error": type(e).__name__} if req.get("pred") is not None else {"gold_ok": False}
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
