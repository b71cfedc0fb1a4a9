"""A local Apache Kafka broker in KRaft mode: one process that is broker and controller.

Kafka is fetched from Maven Central by Maven (``streaming/kafka/pom.xml``) rather than as the
release tarball, because Maven Central is reachable wherever PyPI is and Maven caches and
verifies every jar. The jars land once in ``~/.cache/taxi-mlops/kafka-<version>/libs``
(``TAXI_CACHE_DIR`` moves it), shared by every clone of the project.

The broker's data (``settings.kafka_data_dir``) is formatted once with a cluster id kept
beside it, so a restart keeps every topic and offset.

With ``TAXI_KAFKA_BOOTSTRAP_SERVERS``/``KAFKA_BOOTSTRAP_SERVERS`` set nothing is started:
``kafka_service`` returns ``None`` and every client uses that bootstrap string.
"""

from __future__ import annotations

import base64
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
from taxi_mlops.stack.process import Service
from taxi_mlops.streaming import clients

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


def cache_root() -> Path:
    return Path(os.environ.get("TAXI_CACHE_DIR", Path.home() / ".cache" / "taxi-mlops"))


def libs_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def _java() -> str:
    java = shutil.which("java")
    if not java:
        raise BrokerSetupError("`java` not found: Kafka 4 needs Java 17+. Install it "
                               "(`apt-get install openjdk-17-jre-headless`) and retry.")
    return java


def ensure_jars(progress: Callable[[str], None] = print) -> Path:
    """Download Kafka and its logging binding once; returns the folder of jars."""
    libs = libs_dir()
    if (libs / ".complete").exists():
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
    if proc.returncode != 0 or not list(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerSetupError(
            "Maven could not fetch Kafka (exit code {}); check network access to Maven Central, "
            "then retry. Last output:\n{}".format(proc.returncode, "\n".join(tail)))
    (staging / ".complete").write_text(KAFKA_VERSION)
    if libs.exists():  # a half-finished earlier attempt, or a concurrent clone won the race
        if (libs / ".complete").exists():
            shutil.rmtree(staging, ignore_errors=True)
            return libs
        shutil.rmtree(libs)
    staging.rename(libs)
    progress(f"Kafka {KAFKA_VERSION} ready ({len(list(libs.glob('*.jar')))} jars)")
    return libs


def _config_path(settings: Settings) -> Path:
    return settings.kafka_data_dir / "server.properties"


def _log4j_path(settings: Settings) -> Path:
    return settings.kafka_data_dir / "log4j2.properties"


def _log_dir(settings: Settings) -> Path:
    return settings.kafka_data_dir / "data"


LOG4J2 = """\
# Kafka's own logs go to stdout, which the supervisor writes to the service's log file.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
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
    _log4j_path(settings).write_text(LOG4J2)
    return path


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


def _java_command(settings: Settings, libs: Path, main: str) -> list[str]:
    return [
        _java(), *HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
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
               "format", "-t", cluster_id(settings), "-c", str(config), "--ignore-formatted"]
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


def kafka_service(settings: Settings) -> Service | None:
    """The broker as a supervised service, or ``None`` when an external cluster is configured."""
    if settings.kafka_bootstrap_override:
        return None
    libs = libs_dir()
    # The main class is only checked once the jars exist (prepare downloads them).
    command = _java_command(settings, libs, "kafka.Kafka") + [str(_config_path(settings))]
    main_at = len(command) - 2

    def _prepare() -> None:
        prepare(settings)
        command[main_at] = broker_main_class(libs)

    return Service(
        name="kafka",
        command=command,
        healthy=lambda: clients.broker_reachable(settings.kafka_bootstrap_servers),
        url=f"PLAINTEXT://{settings.kafka_bootstrap_servers}",
        cwd=settings.kafka_data_dir,
        prepare=_prepare,
        stop_timeout_s=30.0,
        details=lambda: {"version": KAFKA_VERSION, "mode": "KRaft (broker+controller)",
                         "data": str(settings.kafka_data_dir), "jars": str(libs)},
    )
