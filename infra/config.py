"""pairlake configuration: embedded defaults, an optional profile, a user file, the environment.

The embedded defaults are the dataclass defaults below and are production-safe: nothing private or
loopback may be downloaded, no local checkpoint is loaded, thresholds are those of real CLIP
models. A profile (``infra/configs/<name>.toml``, e.g. ``demo``) is applied only when asked for
(``--profile``, ``$PAIRLAKE_PROFILE``); then a user file (``--config``, ``$PAIRLAKE_CONFIG``); then
``PAIRLAKE__SECTION__KEY=value`` variables. ``load_config`` refuses unknown keys and bad values
with one clear line; ``effective_config`` also says where every value came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_ENV = "PAIRLAKE_CONFIG"
PROFILE_ENV = "PAIRLAKE_PROFILE"
# PAIRLAKE__DOWNLOAD__TIMEOUT_S=5 sets download.timeout_s (the value is read as TOML, else a string).
KEY_ENV_PREFIX = "PAIRLAKE__"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_ALLOW_EXAMPLES = "'127.0.0.1:18765', 'localhost:8080', '[::1]:8080' or '10.0.0.0/8:443'"


class InputError(ValueError):
    """Bad input from the user (config, hash list, labels...): one clear line, no traceback."""


class ConfigError(InputError):
    """A configuration value is missing, unknown or out of range."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach an object store (``lake.storage_options`` for an ``s3://`` lake root,
    ``crawl.storage_options`` for WARC files at ``s3://`` URLs); unused for local folders.

    Credentials are never config values: the config names the environment variables that hold
    them, read where the lake is opened (the driver and every executor). Unset variables leave
    the store's own chain (an instance role, ~/.aws) to find credentials."""

    endpoint: str = ""  # empty: AWS S3 itself; else an S3-compatible store's URL
    region: str = ""
    allow_http: bool = False  # plain http to the endpoint (a store on a private network)
    addressing_style: str = "virtual"  # "virtual" (bucket.host) or "path" (host/bucket)
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = "AWS_SESSION_TOKEN"


@dataclass(frozen=True)
class LakeConfig:
    root: str = "lake"  # a local path, or s3://bucket/prefix (see storage_options)
    storage_options: StorageOptions = field(default_factory=StorageOptions)
    # Ordinary history: `pairlake vacuum` deletes files unreferenced for longer than this (time
    # travel reaches back this far). Removals purge regardless (see infra/purge.py).
    history_retention_hours: int = 168
    # `pairlake optimize` (and the weekly compaction schedule) packs small files into files of ~this.
    compact_target_mb: int = 256


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "pairlake"
    # Partitions of every shuffle (joins, repartitions): about 2-3 per executor core of the cluster.
    shuffle_partitions: int = 8
    # Where executors reach the driver, and the address it binds. Loopback suits local mode and a
    # cluster on this host; with remote executors set the driver machine's reachable address
    # (and bind_address "0.0.0.0" or that address).
    driver_host: str = "127.0.0.1"
    bind_address: str = "127.0.0.1"
    # Rows and bytes per Arrow batch between Spark and its Python tasks, whichever comes first: the
    # bound on the image bytes a task holds at once.
    arrow_batch_rows: int = 2048
    arrow_batch_mb: int = 128
    # Extra spark.* settings, passed through as-is.
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CrawlConfig:
    crawl_id: str = "crawl"
    # A folder of .warc.gz files (local or s3://bucket/prefix/), or a warc.paths(.gz) listing whose
    # lines are relative to base_url (e.g. https://data.commoncrawl.org/ or s3://commoncrawl/).
    source: str = ""
    base_url: str = ""
    # For s3:// sources: the crawl's store, apart from the lake's (its own endpoint and credentials).
    storage_options: StorageOptions = field(default_factory=StorageOptions)


@dataclass(frozen=True)
class ExtractConfig:
    min_caption_chars: int = 5
    max_caption_chars: int = 1000
    max_page_bytes: int = 5_000_000
    # Parse budget: a page with more start tags, or whose elements would nest deeper, is skipped
    # before parsing (warc_rejects reason page_too_complex). The parser's cost grows with the square
    # of the nesting depth; browsers stop nesting at 512.
    max_page_elements: int = 200_000
    max_nesting_depth: int = 1024
    # Parse-time opt-outs read from the page itself: <meta name="robots"> with noai, noimageai,
    # noindex, noimageindex or none, and TDMRep's <meta name="tdm-reservation" content="1">. Its
    # candidates carry the signal and their images are never requested.
    honour_meta_robots: bool = True
    honour_tdm_meta: bool = True
    # Reading WARC files over http(s) (spark_jobs/warc_input.py): a transient error (connection
    # lost, timeout, HTTP 429 or 5xx) is retried up to read_retries times in a row, after
    # read_backoff_s doubling each time; a lost connection resumes where it stopped. read_timeout_s
    # bounds each wait for the server. A file still unreadable fails its partition only.
    read_retries: int = 5
    read_backoff_s: float = 1.0
    read_timeout_s: float = 60.0
    # A task holds at most this many of a file's pairs (and rejects) before passing them on: its
    # memory is set here, not by the size of the WARC file (a Common Crawl file has ~600k pairs).
    batch_rows: int = 50_000


@dataclass(frozen=True)
class DownloadConfig:
    image_size: int = 256
    resize_mode: str = "border"  # img2dataset modes: no, border, keep_ratio, keep_ratio_largest, center_crop
    min_image_size: int = 32
    max_aspect_ratio: float = 3.0
    max_body_bytes: int = 20_000_000
    max_image_pixels: int = 89_478_485  # PIL's decompression-bomb limit
    # Memory the decodes of one download task may hold at once; a bigger image is refused.
    decode_memory_mb: int = 1024
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    concurrency: int = 64
    # Both per (scheme, host, port). per_host_concurrency is the whole run's limit, on any number
    # of executors: a host's URLs all go to one Spark task. The breaker: once this many of a host's
    # URLs time out in a row, its remaining URLs fail fast (host_unresponsive, retryable); 0 = never.
    per_host_concurrency: int = 8
    host_breaker_timeouts: int = 5
    user_agent: str = "pairlake/0.1 (+https://github.com/pairlake)"
    # Opt-out signals honoured at download time (spark_jobs/download/origin_policies.py).
    honour_x_robots_tag: bool = True
    honour_tdm_header: bool = True
    honour_tdmrep_json: bool = True
    honour_ai_txt: bool = True
    honour_robots_txt: bool = True  # groups for our user agent (or *)
    honour_robots_txt_ai_agents: bool = True  # groups naming AI-training crawlers
    # Private, loopback and link-local addresses are refused unless listed here as host:port or
    # CIDR:port ("127.0.0.1:18765", "[::1]:8080", "10.0.0.0/8:443"), which allows that port only.
    allow_hosts: tuple[str, ...] = ()
    encode_format: str = "jpg"
    encode_quality: int = 95
    tasks: int = 0  # Spark tasks per download job; 0 = spark default parallelism


@dataclass(frozen=True)
class ClipConfig:
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"  # an open_clip pretrained tag, or empty
    checkpoint: str = ""  # a local checkpoint path (overrides pretrained)
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"  # auto, cpu, cuda
    # Cosine threshold for the kept set, per model name (LAION-5B: 0.28 for ViT-B/32).
    thresholds: dict[str, float] = field(default_factory=lambda: {"ViT-B-32": 0.28, "ViT-L-14": 0.3})


@dataclass(frozen=True)
class TagScorerConfig:
    """One tag's scorer: a head over embeddings, or zero-shot prompts (positive vs negative)."""

    head: str = ""  # a head file (.pt), or the name of a head trained into <lake>/heads
    layout: str = ""  # for a published head file that has no JSON sidecar (laion-aesthetic-v2, ...)
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class CurationConfig:
    # clip-retrieval hides results at or above 0.94 cosine as duplicates.
    near_duplicate_threshold: float = 0.94
    near_duplicate_neighbours: int = 16
    near_duplicate_probes: int = 4  # k-means cells each embedding searches (faiss nprobe)
    # Cells are about sqrt(rows); the driver trains them on 40 sampled rows each (16,384 cells of
    # 512-dim embeddings: 1.3 GB), so this caps the driver's memory.
    near_duplicate_max_cells: int = 16_384
    languages: tuple[str, ...] = ()  # caption languages kept; empty keeps all
    # Safety variants in Re-LAION's spirit: the highest p_unsafe each keeps.
    variants: dict[str, float] = field(default_factory=lambda: {"research": 0.95, "research-safe": 0.45})


@dataclass(frozen=True)
class IndexConfig:
    variant: str = "research"  # the curated variant the kNN index covers
    memory_budget_mb: int = 4096
    recall_target: float = 0.95
    max_k: int = 10_000  # the most results one query may ask for
    # Rows one Spark task adds to its shard of the index: the task holds them (2 KB each at 512-d).
    rows_per_shard: int = 500_000
    # Also index the caption embeddings (modality "text": "Search over text" in clip-retrieval);
    # the two indexes share memory_budget_mb.
    text_index: bool = True


@dataclass(frozen=True)
class ReleaseConfig:
    """The named, versioned release: webdataset shards of one curated variant."""

    name: str = "en-research-safe"
    variant: str = "research-safe"  # the curated variant released
    samples_per_shard: int = 10000
    # After removals land (opt-outs, new hash lists), the re-release sensor waits this long for
    # more before making the next version, so a burst of requests gives one re-release.
    rerelease_debounce_s: int = 3600
    # A new version that would drop more than this fraction of the previous one's samples is held
    # until `pairlake release confirm` (an over-broad removal must not publish an empty release).
    max_auto_drop_fraction: float = 0.01


@dataclass(frozen=True)
class OptOutConfig:
    inbox: str = "optout/inbox"  # request files; relative to the lake root unless absolute
    # Example-image requests remove stored images at least this similar (CLIP image cosine).
    min_similarity: float = 0.95
    # A request matching more than this fraction of the lake's pairs, or more than this many, or
    # naming a public suffix, is held as needs_confirmation until `pairlake optout confirm ID`.
    max_auto_fraction: float = 0.001
    max_auto_samples: int = 1000
    # A removal waits this long for another removal of the same lake to finish, then says so.
    lock_wait_s: int = 600


@dataclass(frozen=True)
class SearchConfig:
    """`pairlake serve`: the kNN search service (clip-retrieval's back-end API) and its web UI."""

    host: str = "127.0.0.1"  # another address needs a token in $PAIRLAKE_SEARCH_TOKEN
    port: int = 1234  # clip-retrieval's back end's default
    # How stale a served index may be: 0 reads its manifest on every query, so a removed pair is
    # never returned once the removal run has finished (a bucket: one GET per query).
    manifest_check_s: float = 0.0
    max_num_images: int = 1000  # results with metadata per query
    max_result_ids: int = 10_000  # results per query
    max_body_bytes: int = 30_000_000  # a query's JSON (an image in base64 is 4/3 of its bytes)
    max_text_chars: int = 1000
    # Concurrent text (or image) queries encoded in one model forward at most; 1: one at a time.
    max_query_batch: int = 16
    # Removal requests from the UI, per client address per hour (they land in the opt-out inbox).
    removal_requests_per_hour: int = 10
    # A multilingual text tower in the index's embedding space (open_clip, e.g.
    # "xlm-roberta-base-ViT-B-32" / "laion5b_s13b_b90k" beside ViT-B-32 laion2b): `use_mclip`.
    multilingual_model: str = ""
    multilingual_pretrained: str = ""
    multilingual_checkpoint: str = ""


@dataclass(frozen=True)
class DemoConfig:
    model_dir: str = "infra/demo_model"
    crawl_dir: str = "build/sample_crawl"
    server_port: int = 18765
    pages: int = 60
    seed: int = 0
    # `make demo-s3`: the lake in this bucket of a local S3 server keeping its data in s3_dir.
    s3_dir: str = "build/s3"
    s3_port: int = 18333
    s3_bucket: str = "pairlake-demo"


# Without trained heads, production tags come from prompts (a trained head replaces any of them).
_ZERO_SHOT_TAGS = {
    "punsafe": TagScorerConfig(
        positive=("an explicit photo with nudity", "pornographic content", "a photo of graphic violence and gore"),
        negative=("a safe for work photo", "a photo of everyday objects", "a photo of people fully clothed",
                  "a landscape photo")),
    "pwatermark": TagScorerConfig(
        positive=("a stock photo with a watermark", "an image with copyright text written across it"),
        negative=("a photo without any text", "a clean photo")),
    "aesthetic": TagScorerConfig(
        positive=("a beautiful, professional, high quality photograph",),
        negative=("a blurry, badly lit, low quality snapshot",)),
    # The search service's use_violence_detector (clip-retrieval scores prompts the same way).
    "pviolence": TagScorerConfig(
        positive=("a photo of violence", "people fighting", "a bloody injury", "a person threatening with a weapon"),
        negative=("a peaceful photo", "people talking calmly", "a photo of everyday life")),
}


@dataclass(frozen=True)
class PairlakeConfig:
    lake: LakeConfig = field(default_factory=LakeConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    tags: dict[str, TagScorerConfig] = field(default_factory=lambda: dict(_ZERO_SHOT_TAGS),
                                              metadata={"values": TagScorerConfig})
    curation: CurationConfig = field(default_factory=CurationConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    optout: OptOutConfig = field(default_factory=OptOutConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def clip_threshold(self) -> float:
        """The kept-set threshold for the configured CLIP model."""
        try:
            return self.clip.thresholds[self.clip.model]
        except KeyError:
            raise ConfigError(
                f"clip.thresholds has no entry for model {self.clip.model!r}; add one"
            ) from None


_REPLACED_MAPS = ("conf", "thresholds", "tags", "variants")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        # Maps that a config states whole: a production [tags] must not inherit the demo's heads.
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _REPLACED_MAPS:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key {where}{sorted(unknown)[0]}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"config section {where}{name} must be a table")
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        elif "values" in f.metadata:  # a table of named sections of one type
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"config section {where}{name} must be a table of tables")
            kwargs[name] = {k: _build(f.metadata["values"], v, f"{where}{name}.{k}.") for k, v in value.items()}
        else:
            kwargs[name] = _coerce(value, default, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {key} must be an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"config {key} must be >= 0, got {value}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config {key} must be a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"config {key} must be >= 0, got {value}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config {key} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {key} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config {key} must be a table, got {value!r}")
        return dict(value)
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def profile_path(name: str) -> Path:
    """The profile ``name`` (``infra/configs/<name>.toml``), or ConfigError naming the profiles."""
    path = CONFIG_DIR / f"{name}.toml"
    if not name.replace("-", "").replace("_", "").isalnum() or not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise ConfigError(f"unknown config profile {name!r} (profiles: {known})")
    return path


def _environment_keys() -> dict[str, Any]:
    """``PAIRLAKE__SECTION__KEY=value`` variables as a nested table; values are read as TOML when
    they parse (numbers, booleans, lists), else taken as strings."""
    data: dict[str, Any] = {}
    for name, raw in sorted(os.environ.items()):
        if not name.startswith(KEY_ENV_PREFIX):
            continue
        path = name[len(KEY_ENV_PREFIX):].lower().split("__")
        if not all(path):
            raise ConfigError(f"environment variable {name} must look like {KEY_ENV_PREFIX}SECTION__KEY")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another PAIRLAKE__ variable")
        node[path[-1]] = value
    return data


def _layers(path: str | Path | None, overrides: dict[str, Any] | None,
            profile: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(source, data) in the order they apply, after the embedded defaults."""
    layers = []
    profile = profile or os.environ.get(PROFILE_ENV)
    if profile:
        layers.append((f"profile {profile}", _read_toml(profile_path(profile))))
    chosen = path or os.environ.get(CONFIG_ENV)
    if chosen:
        layers.append((f"file {chosen}", _read_toml(Path(chosen))))
    environment = _environment_keys()
    if environment:
        layers.append(("environment", environment))
    if overrides:
        layers.append(("overrides", overrides))
    return layers


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                profile: str | None = None) -> PairlakeConfig:
    """The embedded defaults, then ``profile`` (or $PAIRLAKE_PROFILE), then ``path`` (or
    $PAIRLAKE_CONFIG), then PAIRLAKE__SECTION__KEY variables, then ``overrides``."""
    return effective_config(path, overrides, profile)[0]


def effective_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                     profile: str | None = None) -> tuple[PairlakeConfig, dict[str, str]]:
    """The config and, per dotted key that some layer set, the layer it came from."""
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in _layers(path, overrides, profile):
        data = _merge(data, layer)
        _record_sources(layer, "", source, sources)
    config = _build(PairlakeConfig, data, "")
    _validate(config)
    return _absolute_paths(config), sources


def _absolute_paths(config: PairlakeConfig) -> PairlakeConfig:
    """A relative model checkpoint read against this process's working directory: Spark executors
    open it in theirs (on a cluster, a per-application folder)."""
    checkpoint = config.clip.checkpoint
    if checkpoint and "://" not in checkpoint:
        checkpoint = str(Path(checkpoint).expanduser().absolute())
    return dataclasses.replace(config, clip=dataclasses.replace(config.clip, checkpoint=checkpoint))


def _record_sources(layer: dict[str, Any], prefix: str, source: str, sources: dict[str, str]) -> None:
    for key, value in layer.items():
        dotted = prefix + key
        if isinstance(value, dict) and key not in _REPLACED_MAPS:
            _record_sources(value, dotted + ".", source, sources)
        else:
            for older in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[older]  # a map stated whole replaces what earlier layers said inside it
            sources[dotted] = source


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string


def format_config(config: PairlakeConfig, sources: dict[str, str]) -> str:
    """The effective config as TOML, each value commented with where it came from."""
    lines: list[str] = []

    def origin(key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in sources:
                return sources[".".join(parts[:n])]
        return "default"

    def table(header: str, values: dict[str, Any], header_origin: str | None = None) -> None:
        lines.append(f"\n[{header}]" + (f"  # {header_origin}" if header_origin else ""))
        nested = []
        for key, value in values.items():
            if isinstance(value, dict):
                nested.append((key, value))
            else:
                lines.append(f"{_quoted(key)} = {_toml_value(value)}  # {origin(f'{header}.{key}')}")
        for key, value in nested:
            inner = f"{header}.{_quoted(key)}"
            if key in _REPLACED_MAPS and all(not isinstance(v, dict) for v in value.values()):
                table(inner, value, origin(f"{header}.{key}"))
            else:
                table(inner, value)

    for name, value in dataclasses.asdict(config).items():
        if name == "tags":
            for tag, scorer in value.items():
                table(f"tags.{_quoted(tag)}", scorer, origin("tags"))
        else:
            table(name, value)
    return "\n".join(lines).lstrip("\n") + "\n"


def _quoted(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def parse_allow_entry(entry: str) -> tuple[IPNetwork | str, int]:
    """``host:port`` or ``cidr:port`` (IPv6 in brackets) → (network or lower-cased name, port)."""
    text = entry.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if bracket and rest.startswith(":") else ""
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            host, port = text, ""
        if ":" in host:
            raise ConfigError(f"download.allow_hosts entry {entry!r}: write IPv6 in brackets, e.g. '[::1]:8080'")
    if not host:
        raise ConfigError(f"download.allow_hosts entry {entry!r} has no host: write host:port, e.g. {_ALLOW_EXAMPLES}")
    if not port:
        raise ConfigError(f"download.allow_hosts entry {entry!r} has no port: add the port, e.g. {_ALLOW_EXAMPLES}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"download.allow_hosts entry {entry!r}: {port!r} is not a port number")
    try:
        return ipaddress.ip_network(host, strict=False), int(port)
    except ValueError:
        return host.lower().rstrip("."), int(port)


_RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")


def _validate(config: PairlakeConfig) -> None:
    ex, dl = config.extract, config.download
    if ex.min_caption_chars > ex.max_caption_chars:
        raise ConfigError("config extract.min_caption_chars must not exceed extract.max_caption_chars")
    if ex.read_timeout_s <= 0:
        raise ConfigError("config extract.read_timeout_s must be positive")
    if ex.batch_rows < 1:
        raise ConfigError("config extract.batch_rows must be at least 1")
    if dl.resize_mode not in _RESIZE_MODES:
        raise ConfigError(f"config download.resize_mode must be one of {', '.join(_RESIZE_MODES)}, got {dl.resize_mode!r}")
    if dl.encode_format not in ("jpg", "png", "webp"):
        raise ConfigError(f"config download.encode_format must be jpg, png or webp, got {dl.encode_format!r}")
    for entry in dl.allow_hosts:
        parse_allow_entry(entry)
    if dl.decode_memory_mb < 1:
        raise ConfigError("config download.decode_memory_mb must be at least 1")
    if dl.timeout_s <= 0 or dl.concurrency < 1 or dl.per_host_concurrency < 1:
        raise ConfigError("config download.timeout_s, concurrency and per_host_concurrency must be positive")
    if min(config.spark.shuffle_partitions, config.spark.arrow_batch_rows, config.spark.arrow_batch_mb) < 1:
        raise ConfigError("config spark.shuffle_partitions, arrow_batch_rows and arrow_batch_mb must be at least 1")
    if config.clip.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config clip.device must be auto, cpu or cuda, got {config.clip.device!r}")
    if config.lake.compact_target_mb < 1:
        raise ConfigError("config lake.compact_target_mb must be at least 1")
    if config.release.samples_per_shard < 1:
        raise ConfigError("config release.samples_per_shard must be at least 1")
    if not config.release.name or "/" in config.release.name:
        raise ConfigError(f"config release.name must be a non-empty name without '/', got {config.release.name!r}")
    se = config.search
    if min(se.max_num_images, se.max_result_ids, se.max_body_bytes, se.max_text_chars) < 1 or se.manifest_check_s < 0:
        raise ConfigError("config search limits must be at least 1 and search.manifest_check_s not negative")
    if not 0 < se.port < 65536:
        raise ConfigError(f"config search.port must be a TCP port, got {se.port}")
    if not 0.0 < config.optout.min_similarity <= 1.0:
        raise ConfigError("config optout.min_similarity must be a cosine in (0, 1]")
    if config.optout.max_auto_fraction > 1.0 or config.release.max_auto_drop_fraction > 1.0:
        raise ConfigError("config optout.max_auto_fraction and release.max_auto_drop_fraction are fractions in [0, 1]")
    for model, threshold in config.clip.thresholds.items():
        if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"config clip.thresholds.{model} must be a cosine in [-1, 1], got {threshold!r}")
    for name, scorer in config.tags.items():
        if bool(scorer.head) == bool(scorer.positive or scorer.negative):
            raise ConfigError(f"config tags.{name} needs either head or positive+negative prompts, not both")
        if not scorer.head and not (scorer.positive and scorer.negative):
            raise ConfigError(f"config tags.{name} needs both positive and negative prompts")
    cur = config.curation
    if not 0.0 < cur.near_duplicate_threshold <= 1.0:
        raise ConfigError("config curation.near_duplicate_threshold must be a cosine in (0, 1]")
    if min(cur.near_duplicate_neighbours, cur.near_duplicate_probes, cur.near_duplicate_max_cells) < 1:
        raise ConfigError("config curation.near_duplicate_neighbours, near_duplicate_probes and "
                          "near_duplicate_max_cells must be at least 1")
    if config.curation.variants and "punsafe" not in config.tags:
        raise ConfigError("config curation.variants filter on punsafe: configure tags.punsafe")
    for variant, limit in cur.variants.items():
        if not isinstance(limit, (int, float)) or not 0.0 <= limit <= 1.0:
            raise ConfigError(f"config curation.variants.{variant} must be a probability in [0, 1], got {limit!r}")
    for section in ("index", "release"):
        variant = getattr(config, section).variant
        if variant not in cur.variants:
            raise ConfigError(
                f"config {section}.variant {variant!r} is not a curated variant ({', '.join(cur.variants) or 'none'})"
            )
    if not 0.0 < config.index.recall_target <= 1.0:
        raise ConfigError("config index.recall_target must be in (0, 1]")
    if config.index.rows_per_shard < 1:
        raise ConfigError("config index.rows_per_shard must be at least 1")
    if not config.lake.root:
        raise ConfigError("config lake.root must not be empty")
    _validate_lake_root(config.lake)
    _validate_storage(config.lake.storage_options, "lake")
    _validate_storage(config.crawl.storage_options, "crawl")


_LAKE_SCHEMES = ("s3",)


def _validate_lake_root(lake: LakeConfig) -> None:
    scheme = lake.root.split("://", 1)[0] if "://" in lake.root else ""
    if scheme and scheme not in _LAKE_SCHEMES:
        raise ConfigError(f"config lake.root {lake.root!r}: the lake lives in a local folder or at s3://bucket/prefix")
    if scheme and not lake.root.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError(f"config lake.root {lake.root!r} names no bucket")


def _validate_storage(opts: StorageOptions, section: str) -> None:
    where = f"config {section}.storage_options"
    if opts.addressing_style not in ("virtual", "path"):
        raise ConfigError(f"{where}.addressing_style must be virtual or path, got {opts.addressing_style!r}")
    if opts.endpoint and not opts.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.endpoint must be an http(s):// URL, got {opts.endpoint!r}")
    if opts.endpoint.startswith("http://") and not opts.allow_http:
        raise ConfigError(f"{where}.endpoint is plain http: set allow_http = true to use it")
