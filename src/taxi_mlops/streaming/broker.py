"""A local Apache Kafka broker in KRaft mode: one process that is broker and controller, or
(``kafka_nodes`` > 1) a cluster of such nodes on this machine with a static quorum, node N in
``settings.kafka_node_data_dir(N)`` on its own ports (``Settings.kafka_node_ports``). The node
count and ``kafka_sasl`` (a SASL_PLAINTEXT/SCRAM-SHA-512 listener) are fixed when the data is
first formatted; ``check_cluster_size`` refuses another.

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
from taxi_mlops.streaming import clients, topics

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


def _config_path(settings: Settings, node: int = 0) -> Path:
    return settings.kafka_node_data_dir(node) / "server.properties"


def _log4j_path(settings: Settings, node: int = 0) -> Path:
    return settings.kafka_node_data_dir(node) / "log4j2.properties"


def _log_dir(settings: Settings, node: int = 0) -> Path:
    return settings.kafka_node_data_dir(node) / "data"


def _jmx_config_path(settings: Settings, node: int = 0) -> Path:
    return settings.kafka_node_data_dir(node) / "jmx-exporter.yaml"


def _log_template_path(settings: Settings, node: int = 0) -> Path:
    return settings.kafka_node_data_dir(node) / "log-template.json"


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


def node_name(node: int) -> str:
    """Node 0 keeps the single broker's service name (logs/kafka.log); the others are kafka-N."""
    return "kafka" if node == 0 else f"kafka-{node}"


def node_address(settings: Settings, node: int) -> str:
    return f"{settings.host}:{settings.kafka_node_ports(node)[0]}"


def broker_properties(settings: Settings, node: int = 0) -> dict:
    """``server.properties`` of node ``node`` (broker and controller) of a ``kafka_nodes``-node
    KRaft cluster bound to ``settings.host``. A static quorum (``controller.quorum.voters``,
    every node a voter): no dynamic-quorum bootstrap step to get wrong, and a majority
    (2 of 3) keeps electing a leader when one node dies."""
    host = settings.host
    port, controller_port, _ = settings.kafka_node_ports(node)
    factor, min_isr = topics.replication(settings.kafka_nodes)
    voters = ",".join(f"{i + 1}@{host}:{settings.kafka_node_ports(i)[1]}" for i in range(settings.kafka_nodes))
    listener = "SASL_PLAINTEXT" if settings.kafka_sasl else "PLAINTEXT"
    return {
        "node.id": node + 1,
        "process.roles": "broker,controller",
        "listeners": f"{listener}://{host}:{port},"
                     f"CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"{listener}://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        **_sasl_properties(settings),
        "controller.quorum.voters": voters,
        "log.dirs": str(_log_dir(settings, node)),
        "num.partitions": 1,
        # Topics are created with these defaults (topics.ensure_topics), internal ones below.
        "default.replication.factor": factor,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": factor,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": min_isr,
        # Topics are declared in streaming/topics.py; a typo must fail, not create a topic.
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "log.retention.check.interval.ms": 60_000,
    }


def _sasl_properties(settings: Settings) -> dict:
    """SCRAM-SHA-512 on the client and inter-broker listener (``kafka_sasl``). The brokers log in
    to each other as ``kafka_sasl_username``; the password sits in server.properties, written
    with mode 0600, and Kafka prints it as [hidden]. The controller listener stays PLAINTEXT:
    KRaft controllers cannot use SCRAM (its credentials live in the metadata they serve)."""
    if not settings.kafka_sasl:
        return {}
    from taxi_mlops import security

    mechanism = clients.SASL_MECHANISM
    login = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
             f'username="{settings.kafka_sasl_username}" password="{security.kafka_password(settings)}";')
    return {"sasl.enabled.mechanisms": mechanism, "sasl.mechanism.inter.broker.protocol": mechanism,
            f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config": login}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (it may hold the SCRAM password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_TRUNC
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_config(settings: Settings, node: int = 0) -> Path:
    """Write node ``node``'s server.properties, log4j2 and JMX exporter configs into its data dir."""
    settings.kafka_node_data_dir(node).mkdir(parents=True, exist_ok=True)
    path = _config_path(settings, node)
    _write_private(path, "# Written by taxi_mlops.streaming.broker; edits are overwritten on start.\n"
                   + "".join(f"{k}={v}\n" for k, v in broker_properties(settings, node).items()))
    _log4j_path(settings, node).write_text(LOG4J2.format(layout=_log_layout(settings, node)))
    _jmx_config_path(settings, node).write_text(JMX_EXPORTER_CONFIG)
    return path


def _log_layout(settings: Settings, node: int = 0) -> str:
    """JSON lines when log4j-layout-template-json is among the jars, else the pattern layout."""
    if list(libs_dir().glob("log4j-layout-template-json-*.jar")):
        template = _log_template_path(settings, node)
        template.write_text(LOG_TEMPLATE.replace('"component": "kafka"', f'"component": "{node_name(node)}"'))
        return ("appender.out.layout.type = JsonTemplateLayout\n"
                f"appender.out.layout.eventTemplateUri = {template.as_uri()}")
    return ("appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n")


def _claim(path: Path, value: str) -> str:
    """Write ``value`` to ``path`` unless it exists; returns what the file holds. Atomic
    (link of a complete temporary file), so nodes formatting at once agree on one value."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        tmp.write_text(value + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def cluster_id(settings: Settings) -> str:
    """Generated on first use and kept in node 0's data dir: every node's log dir is stamped
    with it."""
    return _claim(settings.kafka_data_dir / "cluster.id",
                  base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))


def _formatted_fact(settings: Settings, name: str, now: str, before: str) -> str:
    """What the data was formatted with (``cluster.<name>`` in node 0's dir): claimed from
    ``now`` on a fresh cluster; ``before`` for data formatted before it was recorded."""
    path = settings.kafka_data_dir / f"cluster.{name}"
    if path.exists():
        return path.read_text().strip()
    if (_log_dir(settings) / "meta.properties").exists():
        return before
    return _claim(path, now)


def check_cluster_size(settings: Settings) -> None:
    """The node count and SCRAM are fixed when the data is first formatted (the quorum's voters
    and the credential are in its log): starting the same data with another ``kafka_nodes`` or
    ``kafka_sasl`` fails here, saying how."""
    moved = (f"or stop the stack and move {settings.kafka_data_dir} and its kafka-N siblings "
             "away to start empty")
    recorded = _formatted_fact(settings, "nodes", str(settings.kafka_nodes), "1")
    if recorded != str(settings.kafka_nodes):
        raise BrokerSetupError(
            f"the Kafka data in {settings.kafka_data_dir} belongs to a {recorded}-node cluster, and "
            f"kafka_nodes is {settings.kafka_nodes}: run with `--kafka-nodes {recorded}` "
            f"(TAXI_KAFKA_NODES={recorded}), {moved}")
    sasl = _formatted_fact(settings, "sasl", "scram" if settings.kafka_sasl else "none", "none")
    if sasl != ("scram" if settings.kafka_sasl else "none"):
        want = "true" if sasl == "scram" else "false"
        raise BrokerSetupError(
            f"the Kafka data in {settings.kafka_data_dir} was formatted with kafka_sasl={want}: "
            f"set TAXI_KAFKA_SASL={want}, {moved}")


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


def _java_command(settings: Settings, libs: Path, main: str, agent: bool = False,
                  node: int = 0) -> list[str]:
    javaagent = []
    if agent:
        jar = agent_jar() or agent_dir() / f"{AGENT_ARTIFACT}.jar"  # resolved again by prepare
        javaagent = [f"-javaagent:{jar}={settings.host}:{settings.kafka_node_ports(node)[2]}:"
                     f"{_jmx_config_path(settings, node)}"]
    return [
        _java(), *HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true", *javaagent,
        f"-Dlog4j2.configurationFile={_log4j_path(settings, node)}",
        f"-Dkafka.logs.dir={settings.logs_dir}",
        "-cp", f"{libs}/*", main,
    ]


def format_storage(settings: Settings, node: int = 0) -> bool:
    """Format the node's log dir for KRaft once; False when it already is (data survives restarts)."""
    if (_log_dir(settings, node) / "meta.properties").exists():
        return False
    libs = libs_dir()
    config = _config_path(settings, node)
    if not config.exists():
        config = write_config(settings, node)
    java = _java_command(settings, libs, storage_tool_class(libs), node=node)
    # "--cluster-id=ID", not "-t ID": a url-safe base64 id may start with "-" (1 in 32),
    # which argparse then reads as an option.
    tool_args = ["format", f"--cluster-id={cluster_id(settings)}", "-c", str(config), "--ignore-formatted"]
    scram = _scram_argument(settings)
    argfile = settings.kafka_node_data_dir(node) / ".format.args"
    if scram:  # the password goes through a 0600 java @argfile, never the command line
        main = java.pop()
        _write_private(argfile, "\n".join(_quote_arg(a) for a in [main, *tool_args, "--add-scram", scram]) + "\n")
        command = [*java, f"@{argfile}"]
    else:
        command = [*java, *tool_args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BrokerSetupError(f"kafka-storage format did not finish in {FORMAT_TIMEOUT_S}s; "
                               "check the machine's load and retry") from None
    finally:
        argfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise BrokerSetupError(
            f"kafka-storage format failed (exit {result.returncode}). If "
            f"{settings.kafka_node_data_dir(node)} holds another cluster's data, move it away and "
            f"retry.\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return True


def _scram_argument(settings: Settings) -> str | None:
    """kafka-storage's ``--add-scram`` value (KIP-900): the SCRAM credential the brokers and
    our clients log in with, created in the cluster's bootstrap metadata at format time."""
    if not settings.kafka_sasl:
        return None
    from taxi_mlops import security

    return (f"{clients.SASL_MECHANISM}=[name={settings.kafka_sasl_username},"
            f"password={security.kafka_password(settings)}]")


def _quote_arg(arg: str) -> str:
    """One argument of a java @argfile (double-quoted; the launcher reads backslash escapes)."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prepare(settings: Settings, progress: Callable[[str], None] = print, node: int = 0) -> None:
    ensure_jars(progress)
    check_cluster_size(settings)
    write_config(settings, node)
    format_storage(settings, node)


def broker_version(settings: Settings) -> str:
    if settings.kafka_bootstrap_override:
        return "external cluster (version not managed here)"
    return KAFKA_VERSION


def broker_command(settings: Settings, node: int = 0) -> list[str]:
    """``java -javaagent:... -cp libs/* <main> server.properties``; the main class and agent
    path are placeholders until ``prepare_broker`` fills them in (the jars may not exist yet)."""
    return (_java_command(settings, libs_dir(), "kafka.Kafka", agent=True, node=node)
            + [str(_config_path(settings, node))])


def prepare_broker(settings: Settings, command: list[str],
                   progress: Callable[[str], None] = print, node: int = 0) -> None:
    """Install, configure and format, then fix up ``command`` (from ``broker_command``) in place."""
    prepare(settings, progress, node)
    fresh = _java_command(settings, libs_dir(), broker_main_class(libs_dir()), agent=True, node=node) \
        + [str(_config_path(settings, node))]
    command[:] = fresh


def metrics_url(settings: Settings, node: int = 0) -> str:
    return f"http://{settings.host}:{settings.kafka_node_ports(node)[2]}/metrics"
