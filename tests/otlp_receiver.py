"""An OTLP/HTTP logs and traces receiver for ringship's tests.

Decodes every request with the official generated classes (PyPI's
opentelemetry-proto), protobuf or JSON, gzip or not; keeps what it got;
answers as scripted. Started by tests/otlp.rs on loopback:

    python3 tests/otlp_receiver.py PORT [LOG]     (PORT 0: any free port)

It prints `PORT n` once listening. With LOG, the seqs of every request
it takes are also appended to that file, a JSON list a line, so that a
receiver killed mid-stream leaves what it took behind. POST /script appends
scripted answers to /v1/logs, each [status, retry_after, rejected,
garbage], and POST /script/traces to /v1/traces; GET /dump returns what
it got as JSON.
"""

import base64
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()
LOG = sys.argv[2] if len(sys.argv) > 2 else None
STATE = {
    "records": [],
    "gaps": [],
    "spans": [],
    "resources": [],
    "requests": 0,
    "trace_requests": 0,
    "errors": [],
    "script": [],
    "script_traces": [],
}
IDS = ("traceId", "spanId", "parentSpanId")


def hex_ids_to_b64(o):
    """OTLP/JSON writes ids in hex; json_format reads base64."""
    if isinstance(o, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in IDS and isinstance(v, str) else hex_ids_to_b64(v)
            for k, v in o.items()
        }
    return [hex_ids_to_b64(x) for x in o] if isinstance(o, list) else o


def json_violations(o, path="$"):
    """What json_format forgives but OTLP/JSON forbids."""
    out = []
    if isinstance(o, dict):
        for k, v in o.items():
            if "_" in k:
                out.append(f"{path}.{k}: a snake_case key")
            if k in ("severityNumber", "kind", "code") and not isinstance(v, int):
                out.append(f"{path}.{k}: an enum that is not a number")
            if k.endswith("TimeUnixNano") or k in ("timeUnixNano", "intValue"):
                if not isinstance(v, str):
                    out.append(f"{path}.{k}: a 64-bit integer that is not a string")
            out += json_violations(v, f"{path}.{k}")
    elif isinstance(o, list):
        for i, x in enumerate(o):
            out += json_violations(x, f"{path}[{i}]")
    return out


def value(v):
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "bytes_value":
        return {"bytes": base64.b64encode(v.bytes_value).decode()}
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        return v.double_value
    return None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", ctype="application/x-protobuf", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            dump = {k: v for k, v in STATE.items() if not k.startswith("script")}
            self.reply(200, json.dumps(dump).encode(), "application/json")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path in ("/script", "/script/traces"):
            with LOCK:
                STATE["script" if self.path == "/script" else "script_traces"].extend(json.loads(body))
            return self.reply(200, b"", "text/plain")
        if self.path not in ("/v1/logs", "/v1/traces"):
            return self.reply(404, b"not here", "text/plain")
        traces = self.path == "/v1/traces"
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        is_json = ctype == "application/json"
        with LOCK:
            STATE["trace_requests" if traces else "requests"] += 1
            script = STATE["script_traces" if traces else "script"]
            step = script.pop(0) if script else [200, None, None, False]
        status, retry_after, rejected, garbage = (step + [None, None, False])[:4]
        if status != 200:
            headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
            return self.reply(status, b"scripted refusal", "text/plain", headers)
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            req = ExportTraceServiceRequest() if traces else ExportLogsServiceRequest()
            if is_json:
                raw = json.loads(body)
                bad = json_violations(raw)
                if bad:
                    raise ValueError("; ".join(bad[:5]))
                json_format.ParseDict(hex_ids_to_b64(raw), req, ignore_unknown_fields=True)
            elif ctype == "application/x-protobuf":
                req.ParseFromString(body)
            else:
                raise ValueError(f"Content-Type {ctype!r}")
        except Exception as e:  # noqa: BLE001 - every failure is the test's evidence
            with LOCK:
                STATE["errors"].append(f"{type(e).__name__}: {e}")
            return self.reply(400, str(e).encode(), "text/plain")
        if traces:
            return self.took_spans(req, is_json, rejected, garbage)
        with LOCK:
            taken = []
            for rl in req.resource_logs:
                STATE["resources"].append(attrs(rl.resource.attributes))
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        a = attrs(lr.attributes)
                        if lr.event_name == "ringship.gap":
                            STATE["gaps"].append(dict(a, severity=lr.severity_number, body=value(lr.body)))
                        else:
                            taken.append(a.get("ringship.seq"))
                            STATE["records"].append(
                                {
                                    "seq": a.get("ringship.seq"),
                                    "ring": a.get("ringship.ring_id"),
                                    "body": value(lr.body),
                                    "time": lr.time_unix_nano,
                                    "scope": sl.scope.name,
                                }
                            )
            if LOG:
                with open(LOG, "a") as f:
                    f.write(json.dumps(taken) + "\n")
        if garbage:
            return self.reply(200, b"<html><body>OK</body></html>", "text/html")
        resp = ExportLogsServiceResponse()
        if rejected is not None:
            resp.partial_success.CopyFrom(
                ExportLogsPartialSuccess(rejected_log_records=rejected, error_message="scripted rejection")
            )
        if is_json:
            out = json_format.MessageToJson(resp).encode() if rejected is not None else b"{}"
            return self.reply(200, out, "application/json")
        return self.reply(200, resp.SerializeToString(), "application/x-protobuf")

    def took_spans(self, req, is_json, rejected, garbage):
        with LOCK:
            for rs in req.resource_spans:
                STATE["resources"].append(attrs(rs.resource.attributes))
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        a = attrs(sp.attributes)
                        STATE["spans"].append(
                            {
                                "seq": a.pop("ringship.seq", None),
                                "ring": a.pop("ringship.ring_id", None),
                                "scope": ss.scope.name,
                                "name": sp.name,
                                "kind": sp.kind,
                                "trace_id": sp.trace_id.hex(),
                                "span_id": sp.span_id.hex(),
                                "parent_span_id": sp.parent_span_id.hex(),
                                "start": sp.start_time_unix_nano,
                                "end": sp.end_time_unix_nano,
                                "attributes": a,
                                "events": [[e.name, e.time_unix_nano, attrs(e.attributes)] for e in sp.events],
                                "links": [[ln.trace_id.hex(), ln.span_id.hex()] for ln in sp.links],
                                "status": [sp.status.code, sp.status.message],
                            }
                        )
        if garbage:
            return self.reply(200, b"<html><body>OK</body></html>", "text/html")
        resp = ExportTraceServiceResponse()
        if rejected is not None:
            resp.partial_success.CopyFrom(ExportTracePartialSuccess(rejected_spans=rejected, error_message="scripted"))
        if is_json:
            out = json_format.MessageToJson(resp).encode() if rejected is not None else b"{}"
            return self.reply(200, out, "application/json")
        return self.reply(200, resp.SerializeToString(), "application/x-protobuf")


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
