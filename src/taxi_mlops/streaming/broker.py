"""A local Apache Kafka broker in KRaft mode: one process that is broker and controller.

Kafka is fetched from Maven Central by Maven (``streaming/kafka/pom.xml``) rather than as the
release tarball, because Maven Central is reachable wherever PyPI is and Maven caches and
verifies every jar. The jars land once in ``~/.cache/taxi-mlops/kafka-<version>/libs``
(``TAXI_CACHE_DIR`` moves it), shared by every clone of the project.

The broker's data (``settings.kafka_data_dir``) is formatted once with a cluster id kept
beside it, so a restart keeps every topic and offset.

Observability: the broker runs with the Prometheus JMX exporter as a Java agent
(``-javaagent``, HTTP on ``settings.kafka_metrics_port``) whose rules (``JMX_EXPORTER_CONFIG``,
written into the data dir) turn the few MBeans the dashboards use into the ``kafka_*`` names
of the observability spec; and it logs JSON lines through log4j2's JsonTemplateLayout (the
pattern layout when that jar is missing from an older cache).

The supervised service is defined in ``taxi_mlops.stack.streaming.kafka_service``; this module
only knows how to install, configure and command a broker. With
``TAXI_KAFKA_BOOTSTRAP_SERVERS``/``KAFKA_BOOTSTRAP_SERVERS`` set nothing is started.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Callable

from taxi_mlops import paths
from taxi_mlops.settings import Settings

POM = paths.PACKAGE_DIR / "streaming" / "kafka" / "pom.xml"
DOWNLOAD_TIMEOUT_S = 900
FORMAT_TIMEOUT_S = 120
HEAP = ["-Xms256m", "-Xmx512m"]


class BrokerSetupError(RuntimeError):
    """The broker cannot be installed or prepared; the message says what to do."""


def kafka_version() -> str:
    """The version pinned in the pom (the one place to bump it)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise BrokerSetupError(f"{POM} has no <kafka.version> property; restore the file from git")
    return match.group(1).strip()


KAFKA_VERSION = kafka_version()
AGENT_ARTIFACT = "jmx_prometheus_javaagent"


def cache_root() -> Path:
    return Path(os.environ.get("TAXI_CACHE_DIR", Path.home() / ".cache" / "taxi-mlops"))


def libs_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def agent_dir() -> Path:
    """The JMX exporter agent, beside (not in) the classpath folder."""
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "agent"


def agent_jar() -> Path | None:
    jars = sorted(agent_dir().glob(f"{AGENT_ARTIFACT}-*.jar"))
    return jars[-1] if jars else None


def _pom_stamp() -> str:
    """Which pom the cached jars were fetched for: a changed pom re-checks the cache."""
    return f"{KAFKA_VERSION} {hashlib.sha256(POM.read_bytes()).hexdigest()[:16]}"


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise BrokerSetupError("`java` not found: Kafka 4 needs Java 17+. Install it "
                               "(`apt-get install openjdk-17-jre-headless`) and retry.")
    return java


def ensure_jars(progress: Callable[[str], None] = print) -> Path:
    """Download Kafka, its logging jars and the JMX agent once; returns the folder of jars.

    A cache made from an older pom gets only what it lacks added: jars are never replaced
    or removed in place, because a running broker (another clone's) may be reading them.
    """
    libs = libs_dir()
    stamp = libs / ".complete"
    if stamp.exists() and stamp.read_text().strip() == _pom_stamp() and agent_jar() is not None:
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerSetupError("`mvn` not found: Maven fetches Kafka from Maven Central. "
                               "Install it (`apt-get install maven`) and retry.")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    progress(f"downloading Apache Kafka {KAFKA_VERSION} from Maven Central into {libs} "
             "(about 45 MB, once for every clone)")
    command = [mvn, "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    tail: list[str] = []
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            # One line per jar (Kafka's and, on a cold ~/.m2, the Maven plugin's); poms are noise.
            found = re.search(r"Downloaded from \S+: \S+/([^/\s]+\.jar) \(([\d.]+ [kMG]?B)", line)
            if found:
                progress(f"  fetched {found.group(1)} ({found.group(2)})")
        proc.wait(timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerSetupError(f"Maven did not finish within {DOWNLOAD_TIMEOUT_S}s: check that "
                               "Maven Central is reachable (proxy settings in ~/.m2/settings.xml) "
                               "and retry") from None
    agents = list(staging.glob(f"{AGENT_ARTIFACT}-*.jar"))
    if proc.returncode != 0 or not list(staging.glob("kafka_2.13-*.jar")) or not agents:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerSetupError(
            "Maven could not fetch Kafka (exit code {}); check network access to Maven Central, "
            "then retry. Last output:\n{}".format(proc.returncode, "\n".join(tail)))
    # The agent is a shaded jar loaded by -javaagent; on the classpath it would only duplicate.
    agent_dir().mkdir(parents=True, exist_ok=True)
    for jar in agents:
        os.replace(jar, agent_dir() / jar.name)
    if not libs.exists():
        staging.rename(libs)
    else:  # add what an older cache lacks, one atomic rename per jar
        for jar in staging.glob("*.jar"):
            if not (libs / jar.name).exists():
                os.replace(jar, libs / jar.name)
        shutil.rmtree(staging, ignore_errors=True)
    stamp.write_text(_pom_stamp() + "\n")
    progress(f"Kafka {KAFKA_VERSION} ready ({len(list(libs.glob('*.jar')))} jars, "
             f"JMX agent {agent_jar().name})")
    return libs


def _config_path(settings: Settings) -> Path:
    return settings.kafka_data_dir / "server.properties"


def _log4j_path(settings: Settings) -> Path:
    return settings.kafka_data_dir / "log4j2.properties"


def _log_dir(settings: Settings) -> Path:
    return settings.kafka_data_dir / "data"


def _jmx_config_path(settings: Settings) -> Path:
    return settings.kafka_data_dir / "jmx-exporter.yaml"


def _log_template_path(settings: Settings) -> Path:
    return settings.kafka_data_dir / "log-template.json"


# The MBeans the dashboards and alerts read, named as the observability spec says. Only these
# are queried (includeObjectNames): a scrape stays cheap however many topics there are.
JMX_EXPORTER_CONFIG = """\
# Written by taxi_mlops.streaming.broker; edits are overwritten on start.
lowercaseOutputName: true
lowercaseOutputLabelNames: true
includeObjectNames:
  - "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,*"
  - "kafka.server:type=BrokerTopicMetrics,name=BytesInPerSec,*"
  - "kafka.server:type=BrokerTopicMetrics,name=BytesOutPerSec,*"
  - "kafka.server:type=ReplicaManager,name=UnderReplicatedPartitions"
  - "kafka.network:type=RequestMetrics,name=TotalTimeMs,*"
rules:
  - pattern: 'kafka.server<type=BrokerTopicMetrics, name=(MessagesIn|BytesIn|BytesOut)PerSec, topic=(.+)><>Count'
    name: kafka_server_brokertopicmetrics_$1_total
    type: COUNTER
    labels:
      topic: "$2"
  - pattern: 'kafka.server<type=ReplicaManager, name=UnderReplicatedPartitions><>Value'
    name: kafka_server_replicamanager_underreplicatedpartitions
    type: GAUGE
  - pattern: 'kafka.network<type=RequestMetrics, name=TotalTimeMs, request=(.+)><>(50|99)thPercentile'
    name: kafka_network_requestmetrics_totaltimems
    type: GAUGE
    labels:
      request: "$1"
      quantile: "0.$2"
"""

# The platform's log line (observability.logs): ts, level, component, logger, message.
LOG_TEMPLATE = """\
{"ts": {"$resolver": "timestamp", "pattern": {"format": "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'", "timeZone": "UTC"}},
 "level": {"$resolver": "level", "field": "name"},
 "component": "kafka",
 "logger": {"$resolver": "logger", "field": "name"},
 "message": {"$resolver": "message", "stringified": true},
 "thread": {"$resolver": "thread", "field": "name"},
 "exception": {"$resolver": "exception", "field": "stackTrace", "stackTrace": {"stringified": true}}}
"""

LOG4J2 = """\
# Kafka's own logs go to stdout, which the supervisor writes to the service's log file.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
{layout}
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# Every config dump and request log at INFO drowns the lines that matter.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def write_config(settings: Settings) -> Path:
    """``server.properties`` of a single broker+controller node bound to ``settings.host``."""
    data = settings.kafka_data_dir
    data.mkdir(parents=True, exist_ok=True)
    host = settings.host
    properties = {
        "node.id": 1,
        "process.roles": "broker,controller",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},"
                     f"CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        # A static one-voter quorum: no dynamic-quorum bootstrap step to get wrong.
        "controller.quorum.voters": f"1@{host}:{settings.kafka_controller_port}",
        "log.dirs": str(_log_dir(settings)),
        "num.partitions": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Topics are declared in streaming/topics.py; a typo must fail, not create a topic.
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "log.retention.check.interval.ms": 60_000,
    }
    path = _config_path(settings)
    path.write_text("# Written by taxi_mlops.streaming.broker; edits are overwritten on start.\n"
                    + "".join(f"{k}={v}\n" for k, v in properties.items()))
    _log4j_path(settings).write_text(LOG4J2.format(layout=_log_layout(settings)))
    _jmx_config_path(settings).write_text(JMX_EXPORTER_CONFIG)
    return path


def _log_layout(settings: Settings) -> str:
    """JSON lines when log4j-layout-template-json is among the jars, else the pattern layout."""
    if list(libs_dir().glob("log4j-layout-template-json-*.jar")):
        _log_template_path(settings).write_text(LOG_TEMPLATE)
        return ("appender.out.layout.type = JsonTemplateLayout\n"
                f"appender.out.layout.eventTemplateUri = {_log_template_path(settings).as_uri()}")
    return ("appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n")


def cluster_id(settings: Settings) -> str:
    """Generated on first use and kept in the data dir: the log dirs are stamped with it."""
    path = settings.kafka_data_dir / "cluster.id"
    if path.exists():
        return path.read_text().strip()
    value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    settings.kafka_data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return value


def _main_class(libs: Path, candidates: tuple[str, ...]) -> str:
    """The first of ``candidates`` present in the Kafka jars (classes move between versions)."""
    for jar in sorted(libs.glob("kafka*.jar")):
        with zipfile.ZipFile(jar) as zf:
            names = set(zf.namelist())
        for candidate in candidates:
            if candidate.replace(".", "/") + ".class" in names:
                return candidate
    raise BrokerSetupError(f"none of {candidates} in {libs}; delete that folder and retry "
                           "(the download will be redone)")


def storage_tool_class(libs: Path) -> str:
    return _main_class(libs, ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool"))


def broker_main_class(libs: Path) -> str:
    return _main_class(libs, ("kafka.Kafka", "org.apache.kafka.server.Kafka"))


def _java_command(settings: Settings, libs: Path, main: str, agent: bool = False) -> list[str]:
    javaagent = []
    if agent:
        jar = agent_jar() or agent_dir() / f"{AGENT_ARTIFACT}.jar"  # resolved again by prepare
        javaagent = [f"-javaagent:{jar}={settings.host}:{settings.kafka_metrics_port}:"
                     f"{_jmx_config_path(settings)}"]
    return [
        _java(), *HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true", *javaagent,
        f"-Dlog4j2.configurationFile={_log4j_path(settings)}",
        f"-Dkafka.logs.dir={settings.logs_dir}",
        "-cp", f"{libs}/*", main,
    ]


def format_storage(settings: Settings) -> bool:
    """Format the log dir for KRaft once; False when it already is (data survives restarts)."""
    if (_log_dir(settings) / "meta.properties").exists():
        return False
    libs = libs_dir()
    config = _config_path(settings) if _config_path(settings).exists() else write_config(settings)
    command = [*_java_command(settings, libs, storage_tool_class(libs)),
               # "--cluster-id=ID", not "-t ID": a url-safe base64 id may start with "-" (1 in 32),
               # which argparse then reads as an option.
               "format", f"--cluster-id={cluster_id(settings)}", "-c", str(config), "--ignore-formatted"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BrokerSetupError(f"kafka-storage format did not finish in {FORMAT_TIMEOUT_S}s; "
                               "check the machine's load and retry") from None
    if result.returncode != 0:
        raise BrokerSetupError(
            f"kafka-storage format failed (exit {result.returncode}). If {settings.kafka_data_dir} "
            f"holds another cluster's data, move it away and retry.\n{result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}")
    return True


def prepare(settings: Settings, progress: Callable[[str], None] = print) -> None:
    ensure_jars(progress)
    write_config(settings)
    format_storage(settings)


def broker_version(settings: Settings) -> str:
    if settings.kafka_bootstrap_override:
        return "external cluster (version not managed here)"
    return KAFKA_VERSION


def broker_command(settings: Settings) -> list[str]:
    """``java -javaagent:... -cp libs/* <main> server.properties``; the main class and agent
    path are placeholders until ``prepare_broker`` fills them in (the jars may not exist yet)."""
    return _java_command(settings, libs_dir(), "kafka.Kafka", agent=True) + [str(_config_path(settings))]


def prepare_broker(settings: Settings, command: list[str],
                   progress: Callable[[str], None] = print) -> None:
    """Install, configure and format, then fix up ``command`` (from ``broker_command``) in place."""
    prepare(settings, progress)
    fresh = _java_command(settings, libs_dir(), broker_main_class(libs_dir()), agent=True) \
        + [str(_config_path(settings))]
    command[:] = fresh


def metrics_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.kafka_metrics_port}/metrics"
