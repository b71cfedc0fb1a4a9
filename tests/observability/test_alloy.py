"""deploy/alloy/config.alloy checked statically (no Alloy binary here): syntax shape, the
components of the pipeline, the glob against our log paths, the JSON keys against a real
line from our formatter, and Loki cardinality (request_id is never a label)."""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import re

from taxi_mlops import paths
from taxi_mlops.observability import logs
from taxi_mlops.settings import Settings
from taxi_mlops.stack.process import Supervisor

CONFIG = paths.PROJECT_ROOT / "deploy" / "alloy" / "config.alloy"


def _code() -> str:
    """The config without comments and with string contents blanked (keeps the quotes)."""
    out, text, i = [], CONFIG.read_text(), 0
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"' + "s" * (j - i - 1) + '"')
            i = j + 1
        elif text.startswith("//", i):
            i = text.index("\n", i) if "\n" in text[i:] else len(text)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _block(kind: str, label: str | None = None) -> str:
    """The raw text of the first block ``kind "label" { ... }`` (or ``kind { ... }``)."""
    text = CONFIG.read_text()
    head = re.escape(kind) + (rf'\s+"{re.escape(label)}"' if label else "") + r"\s*\{"
    m = re.search(r"(?m)^\s*" + head, text)
    assert m, f"no {kind} {label or ''} block"
    depth, i = 0, m.end() - 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise AssertionError(f"unclosed {kind}")


def test_blocks_are_balanced():
    code = _code()
    for open_, close in ("{}", "[]", "()"):
        depth = 0
        for c in code:
            depth += (c == open_) - (c == close)
            assert depth >= 0, f"unbalanced {open_}{close}"
        assert depth == 0, f"unbalanced {open_}{close}"
    assert code.count('"') % 2 == 0


def test_pipeline_components_are_wired():
    text = CONFIG.read_text()
    for kind in ("local.file_match", "loki.source.file", "loki.process", "loki.write"):
        assert re.search(rf'(?m)^{re.escape(kind)}\s+"\w+"\s*\{{', text), f"missing {kind}"
    assert "targets    = local.file_match.taxi_logs.targets" in _block("loki.source.file", "taxi_logs")
    assert "loki.process.taxi_logs.receiver" in _block("loki.source.file", "taxi_logs")
    process = _block("loki.process", "taxi_logs")
    assert "loki.write.loki.receiver" in process
    for stage in ("stage.json", "stage.timestamp", "stage.labels", "stage.structured_metadata"):
        assert stage in process, f"loki.process lacks {stage}"
    assert re.search(r'source\s*=\s*"ts"', _block("stage.timestamp")), "timestamp must come from ts"
    assert "/loki/api/v1/push" in _block("loki.write", "loki")


def test_request_id_is_metadata_not_a_label():
    labels = _block("stage.labels")
    assert "request_id" not in labels and "model_version" not in labels
    assert re.search(r"\bcomponent\s*=", labels) and re.search(r"\blevel\s*=", labels)
    assert "request_id" in _block("stage.structured_metadata")


def test_glob_matches_the_log_files_settings_produce(tmp_path):
    glob = re.search(r'"__path__"\s*=\s*coalesce\(sys\.env\("TAXI_STATE_DIR"\),\s*"[^"]*"\)\s*\+\s*"([^"]+)"',
                     CONFIG.read_text())
    assert glob, "__path__ must be the state dir (TAXI_STATE_DIR) + a glob"
    settings = Settings(state_dir=tmp_path)
    pattern = str(settings.state_dir) + glob.group(1)
    sup = Supervisor(settings)
    for name in ("gateway", "model_server", "stream-processor-0", "label-join", "prometheus", "alert_receiver"):
        assert fnmatch.fnmatch(str(sup.log_path(name)), pattern), (name, pattern)
    assert not fnmatch.fnmatch(str(settings.run_dir / "gateway.pid"), pattern)
    component = re.search(r'expression\s*=\s*"(.*)"', _block("stage.regex")).group(1).replace("\\\\", "\\")
    assert re.search(component, str(sup.log_path("stream-processor-0"))).group("component") == "stream-processor-0"


def test_extracted_json_keys_exist_in_a_real_log_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("gateway"))
    logger = logging.getLogger("taxi_mlops.test_alloy")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bound(request_id="req-1", model_version="3"):
            logger.warning("predicted")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    expressions = dict(re.findall(r'(\w+)\s*=\s*"(\w+)"', _block("expressions =")))
    assert expressions, "stage.json has no expressions"
    for key, path in expressions.items():
        assert path in line, f"stage.json extracts {path!r} ({key}), not in {sorted(line)}"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["ts"])  # RFC3339 for stage.timestamp
