"""The run configuration, parsed and validated once.

Every knob lives in ``[tool.flwr.app.config]`` of ``pyproject.toml``; Flower hands it to
both apps as ``context.run_config``. ``RunConfig.from_flower`` turns that flat mapping
into a frozen dataclass, so a typo or an out-of-range value stops the run at start-up
with one message naming the key, instead of failing deep inside a round.

Knobs that belong to one algorithm live in a nested table of their own
(``[tool.flwr.app.config.fedprox]``), which Flower flattens to dotted keys
(``fedprox.mu``); each table is one small frozen dataclass below, validated once, and
its errors name the dotted key (``run config 'fedprox.mu': must be >= 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_app.compression import SCHEMES, CodecSpec
from fl_app.heterogeneity.devices import DeviceSpec

MODELS = ("mlp", "2nn")
ATTACKS = (
    "none",
    "label-flip",
    "sign-flip",
    "gaussian-noise",
    "scale",
    "dropout",
    "canary",
)
# Who adds the DP noise: the server to the sum (central), or each client to its own
# update before it leaves (local).
DP_MODES = ("central", "local")
DATASETS = ("mnist", "fashion-mnist")
PARTITIONERS = ("iid", "dirichlet", "shards")
# Who says which partition a node trains: the server, dealing partition p to the p-th
# node by node id (simulation), or the node, from its own --node-config (deployment).
PARTITION_SOURCES = ("server", "node")


KeyName = Callable[[str], str]  # a group's field name -> its dotted run-config key


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"run config '{key}': {message}")
        self.key = key


# --------------------------------------------------------------------- per-algorithm
@dataclass(frozen=True)
class FedProxConfig:
    """FedProx (Li et al. 2020): weight of the proximal term (mu/2)||w - w_t||^2."""

    mu: float = 0.01

    def validate(self, key: KeyName) -> None:
        _non_negative(key("mu"), self.mu)


@dataclass(frozen=True)
class FedAvgMConfig:
    """FedAvgM (Hsu et al. 2019): server SGD with momentum on the averaged update."""

    server_learning_rate: float = 1.0
    momentum: float = 0.9

    def validate(self, key: KeyName) -> None:
        _positive(key("server-learning-rate"), self.server_learning_rate)
        _unit_interval(key("momentum"), self.momentum)


@dataclass(frozen=True)
class FedOptConfig:
    """FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021): the server optimizer."""

    eta: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 0.001

    def validate(self, key: KeyName) -> None:
        _positive(key("eta"), self.eta)
        _unit_interval(key("beta1"), self.beta1)
        _unit_interval(key("beta2"), self.beta2)
        _positive(key("tau"), self.tau)


@dataclass(frozen=True)
class ScaffoldConfig:
    """SCAFFOLD (Karimireddy et al. 2020): the global step size eta_g."""

    server_learning_rate: float = 1.0

    def validate(self, key: KeyName) -> None:
        _positive(key("server-learning-rate"), self.server_learning_rate)


@dataclass(frozen=True)
class KrumConfig:
    """Krum / Multi-Krum (Blanchard et al. 2017)."""

    num_malicious: int = 2  # f, the attackers the score tolerates
    num_to_keep: int = 0  # m; 0: Krum keeps 1, Multi-Krum keeps n - f

    def validate(self, key: KeyName) -> None:
        _non_negative(key("num-malicious"), self.num_malicious)
        _non_negative(key("num-to-keep"), self.num_to_keep)


@dataclass(frozen=True)
class TrimmedMeanConfig:
    """Coordinate-wise trimmed mean (Yin et al. 2018): share cut at each end."""

    beta: float = 0.2

    def validate(self, key: KeyName) -> None:
        if not 0 <= self.beta < 0.5:
            raise ConfigError(key("beta"), f"must be in [0, 0.5), got {self.beta}")


@dataclass(frozen=True)
class CenteredClippingConfig:
    """Centered clipping (Karimireddy, He & Jaggi 2021): radius and iterations."""

    tau: float = 1.0
    iterations: int = 1

    def validate(self, key: KeyName) -> None:
        _positive(key("tau"), self.tau)
        _positive_int(key("iterations"), self.iterations)


@dataclass(frozen=True)
class DpConfig:
    """Differential privacy, off while clip-norm is 0: central (DP-FedAvg, McMahan
    et al. 2018: the server clips and noises the sum) or local (each client clips and
    noises its own update, ``fl_app.privacy``)."""

    clip_norm: float = 0.0
    noise_multiplier: float = 1.0
    mode: str = "central"  # "central" or "local"
    delta: float = 1e-5
    max_epsilon: float = 0.0  # 0: no budget, the run spends what it spends
    # -1: noise from OS entropy. A seed >= 0 makes DP runs repeat, for studies only:
    # whoever knows it can regenerate the noise and subtract it.
    noise_seed: int = -1

    @property
    def enabled(self) -> bool:
        return self.clip_norm > 0

    @property
    def central(self) -> bool:
        """The server adds the noise (it sees each clipped update first)."""
        return self.enabled and self.mode == "central"

    @property
    def local(self) -> bool:
        """Each client noises its own update: the server never sees it clean."""
        return self.enabled and self.mode == "local"

    def validate(self, key: KeyName) -> None:
        _one_of(key("mode"), self.mode, DP_MODES)
        _non_negative(key("clip-norm"), self.clip_norm)
        if self.enabled:
            _positive(key("noise-multiplier"), self.noise_multiplier)
        if not 0 < self.delta < 1:
            raise ConfigError(key("delta"), f"must be in (0, 1), got {self.delta}")
        _non_negative(key("max-epsilon"), self.max_epsilon)
        if self.noise_seed < -1:
            raise ConfigError(
                key("noise-seed"),
                f"must be -1 (OS entropy) or a seed >= 0, got {self.noise_seed}",
            )


@dataclass(frozen=True)
class AttackConfig:
    """Simulated misbehaving clients, for the robustness studies."""

    kind: str = "none"
    fraction: float = 0.2  # share of partitions that attack, drawn from the seed
    factor: float = 10.0  # sign-flip sends -factor * update, scale +factor * update
    sigma: float = 1.0  # gaussian-noise sends N(0, sigma^2) in place of the update
    # canary sends factor * a fixed random unit direction (the privacy audit's
    # canary clients, Andrew et al. 2024); DP clips it to clip-norm like any update.

    @property
    def enabled(self) -> bool:
        return self.kind != "none" and self.fraction > 0

    def validate(self, key: KeyName) -> None:
        _one_of(key("kind"), self.kind, ATTACKS)
        _fraction(key("fraction"), self.fraction, allow_zero=True)
        _positive(key("factor"), self.factor)
        _positive(key("sigma"), self.sigma)


@dataclass(frozen=True)
class ValidationConfig:
    """What the server accepts from a client before any aggregation."""

    max_num_examples: int = 60_000  # n_k above this is rejected
    max_update_norm: float = 1000.0  # ||w_k - w_t|| above this is rejected; 0: off

    def validate(self, key: KeyName) -> None:
        _positive_int(key("max-num-examples"), self.max_num_examples)
        _non_negative(key("max-update-norm"), self.max_update_norm)


@dataclass(frozen=True)
class CompressionConfig:
    """How clients code their update (``fl_app.compression``); error feedback is on
    for the biased schemes, topk and sign."""

    scheme: str = "none"  # none, fp16, int8, topk, sign
    topk_fraction: float = 0.01  # k: share of each tensor's coordinates topk sends

    @property
    def enabled(self) -> bool:
        return self.scheme != "none"

    def spec(self) -> CodecSpec:
        return CodecSpec(self.scheme, self.topk_fraction)

    def validate(self, key: KeyName) -> None:

        _one_of(key("scheme"), self.scheme, SCHEMES)
        _fraction(key("topk-fraction"), self.topk_fraction, allow_zero=False)


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ (Bell et al. 2020): Flower's ``SecAggPlusWorkflow`` on the server and
    ``secaggplus_mod`` on the clients; the server only ever sees the sum."""

    enabled: bool = False
    num_shares: int = 3  # each client's key is split among this many (itself too)
    reconstruction_threshold: int = 2  # shares needed to rebuild a dropped key
    max_weight: float = 1000.0  # n_k above it is clipped: keep it >= max n_k
    clipping_range: float = 8.0  # each update coordinate clipped to [-c, c]
    quantization_range: int = 4194304  # 2^22 levels over [-c, c]
    timeout: float = 120.0  # seconds each protocol stage waits for replies

    def validate(self, key: KeyName) -> None:
        if self.num_shares < 2:
            raise ConfigError(key("num-shares"), f"must be >= 2, got {self.num_shares}")
        if not 2 <= self.reconstruction_threshold <= self.num_shares:
            raise ConfigError(
                key("reconstruction-threshold"),
                f"must be in [2, num-shares = {self.num_shares}], got "
                f"{self.reconstruction_threshold}",
            )
        _positive(key("max-weight"), self.max_weight)
        _positive(key("clipping-range"), self.clipping_range)
        if not 0 < self.quantization_range < 2**32:
            raise ConfigError(
                key("quantization-range"),
                f"must be in (0, 2^32) (masks live modulo 2^32), got "
                f"{self.quantization_range}",
            )
        _positive(key("timeout"), self.timeout)


@dataclass(frozen=True)
class AuditConfig:
    """What the privacy audit (``scripts/privacy_audit.py``) asks of a run: the
    updates a curious server holds, and training on a seeded half of the data."""

    # The server keeps every update of this round as its pipeline holds it (after
    # decoding and validation, before DP noise): audit/round-<r>.npz. 0 = off.
    capture_round: int = 0
    # Train on a seeded random half of the training set (the membership audit's
    # shadow runs); -1 = all of it.
    half_seed: int = -1

    @property
    def enabled(self) -> bool:
        """The run is part of an audit: the server also lists who took part in
        each round (``audit/sampled.json``)."""
        return self.capture_round > 0 or self.half_seed >= 0

    def validate(self, key: KeyName) -> None:
        if self.capture_round < 0:
            raise ConfigError(
                key("capture-round"),
                f"must be >= 0 (0 = off), got {self.capture_round}",
            )
        if self.half_seed < -1:
            raise ConfigError(
                key("half-seed"), f"must be -1 (all data) or >= 0, got {self.half_seed}"
            )


@dataclass(frozen=True)
class TrackingConfig:
    """Where a run's metrics go besides its folder: TensorBoard event files in the
    run folder (on by default), and an MLflow tracking store (opt-in)."""

    tensorboard: bool = True  # event files in the run folder: tensorboard --logdir
    mlflow_uri: str = ""  # e.g. "sqlite:///mlflow.db" or "file:./mlruns"; "" = off
    mlflow_experiment: str = "fl-app"

    def validate(self, key: KeyName) -> None:
        if self.mlflow_uri and not self.mlflow_experiment:
            raise ConfigError(
                key("mlflow-experiment"),
                "must name an experiment when mlflow-uri is set",
            )


@dataclass(frozen=True)
class HeterogeneityConfig:
    """Simulated devices and a virtual clock (``fl_app.heterogeneity``): each
    partition gets a device (compute speed, links) drawn from the run's seed, each
    reply the virtual seconds its device would take (download + E·n_k·compute +
    upload of the bytes really sent), each round the time the server stops waiting
    (the history's ``virtual_time_s``). Off by default: today's rounds, unchanged."""

    enabled: bool = False
    seconds_per_example: float = 0.005  # median compute time per training example
    compute_sigma: float = 0.8  # log-normal spread of compute speed
    down_mbps: float = 20.0  # median download bandwidth
    up_mbps: float = 5.0  # median upload bandwidth
    link_sigma: float = 1.0  # log-normal spread of both links
    round_deadline: float = 0.0  # virtual s; later replies are dropped; 0 = none
    over_commit: float = 1.0  # sample ceil(f·K) clients, keep the first K to finish
    # FedProx's partial work: a client that cannot finish by the deadline trains
    # what it can and sends that, instead of being dropped.
    partial_work: bool = False
    online_fraction: float = 1.0  # of a virtual day each device is online; 1 = always
    day_seconds: float = 86_400.0  # the virtual day of the online windows

    def spec(self) -> DeviceSpec:
        return DeviceSpec(
            median_seconds_per_example=self.seconds_per_example,
            compute_sigma=self.compute_sigma,
            median_down_bps=self.down_mbps * 1e6,
            down_sigma=self.link_sigma,
            median_up_bps=self.up_mbps * 1e6,
            up_sigma=self.link_sigma,
            online_fraction=self.online_fraction,
            day_s=self.day_seconds,
        )

    def validate(self, key: KeyName) -> None:
        for name in ("seconds-per-example", "down-mbps", "up-mbps", "day-seconds"):
            _positive(key(name), getattr(self, name.replace("-", "_")))
        for name in ("compute-sigma", "link-sigma", "round-deadline"):
            _non_negative(key(name), getattr(self, name.replace("-", "_")))
        if self.over_commit < 1:
            raise ConfigError(
                key("over-commit"), "must be >= 1 (1 = no over-commitment)"
            )
        if not 0 < self.online_fraction <= 1:
            raise ConfigError(
                key("online-fraction"),
                f"must be in (0, 1] (1 = always online), got {self.online_fraction}",
            )
        needs_devices = {
            "round-deadline": self.round_deadline > 0,
            "over-commit": self.over_commit > 1,
            "partial-work": self.partial_work,
            "online-fraction": self.online_fraction < 1,
        }
        for name, used in needs_devices.items():
            if used and not self.enabled:
                raise ConfigError(
                    key(name),
                    "needs the simulated devices that say who finishes when: set "
                    f"{key('enabled')} = true",
                )
        if self.partial_work and self.round_deadline == 0:
            raise ConfigError(
                key("partial-work"),
                "is the work a client can finish by the deadline: set "
                f"{key('round-deadline')} > 0",
            )


SELECTION_POLICIES = ("uniform", "power-of-choice", "oort")


@dataclass(frozen=True)
class SelectionConfig:
    """Which clients a round trains (``strategies.selection``). ``uniform``: the
    seeded draw, unchanged. ``power-of-choice`` (Cho et al., AISTATS 2022): d
    candidates drawn in proportion to their reported n_k, the m of highest
    last-reported training loss kept. ``oort`` (Lai et al., OSDI 2021): reported
    loss times observed speed, and a share of never-tried clients. A policy uses
    only what the server has seen: reported losses and sizes, observed times."""

    policy: str = "uniform"
    candidates: int = 0  # power-of-choice's d; 0 = twice the clients a round
    explore: float = 0.2  # oort's share of a round for clients not tried yet
    alpha: float = 2.0  # oort's penalty exponent for clients slower than wanted

    def validate(self, key: KeyName) -> None:
        _one_of(key("policy"), self.policy, SELECTION_POLICIES)
        if self.candidates < 0:
            raise ConfigError(
                key("candidates"), f"must be >= 0 (0 = 2m), got {self.candidates}"
            )
        if not 0 <= self.explore <= 1:
            raise ConfigError(key("explore"), f"must be in [0, 1], got {self.explore}")
        _non_negative(key("alpha"), self.alpha)


@dataclass(frozen=True)
class FedBuffConfig:
    """FedBuff (Nguyen et al., AISTATS 2022): ``concurrency`` clients train at all
    times; every ``buffer-size`` replies the server applies their mean update, each
    weighted by (1 + staleness)^-``staleness-exponent``, times ``server-lr``. A
    server round (``num-server-rounds``) is one such update."""

    buffer_size: int = 10
    concurrency: int = 20
    staleness_exponent: float = 0.5
    server_lr: float = 1.0

    def validate(self, key: KeyName) -> None:
        _positive_int(key("buffer-size"), self.buffer_size)
        _positive_int(key("concurrency"), self.concurrency)
        _non_negative(key("staleness-exponent"), self.staleness_exponent)
        _positive(key("server-lr"), self.server_lr)


# Table name in pyproject.toml -> its dataclass; the RunConfig field is the name with
# "-" as "_".
GROUPS: dict[str, type] = {
    "fedprox": FedProxConfig,
    "fedavgm": FedAvgMConfig,
    "fedopt": FedOptConfig,
    "scaffold": ScaffoldConfig,
    "krum": KrumConfig,
    "trimmed-mean": TrimmedMeanConfig,
    "centered-clipping": CenteredClippingConfig,
    "dp": DpConfig,
    "attack": AttackConfig,
    "validation": ValidationConfig,
    "compression": CompressionConfig,
    "secagg": SecAggConfig,
    "tracking": TrackingConfig,
    "audit": AuditConfig,
    "heterogeneity": HeterogeneityConfig,
    "selection": SelectionConfig,
    "fedbuff": FedBuffConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """All knobs of one run; field ``x_y`` is the config key ``x-y``."""

    num_server_rounds: int = 10
    fraction_fit: float = 0.1
    fraction_evaluate: float = 0.0
    min_fit_clients: int = 2
    min_available_clients: int = 2
    min_available_timeout: float = 300.0
    round_timeout: float = 0.0
    local_epochs: int = 1
    batch_size: int = 10
    learning_rate: float = 0.1
    model: str = "2nn"
    dataset: str = "mnist"
    data_dir: str = ""
    partitioner: str = "iid"
    partition_source: str = "server"
    num_partitions: int = 0
    clients_per_message: int = 0
    dirichlet_alpha: float = 0.5
    val_fraction: float = 0.1
    seed: int = 42
    strategy: str = "fedavg"
    stop_at_accuracy: float = 0.0
    output_dir: str = "outputs"
    resume: bool = False
    resume_dir: str = ""
    reproducible: bool = False
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    fedavgm: FedAvgMConfig = field(default_factory=FedAvgMConfig)
    fedopt: FedOptConfig = field(default_factory=FedOptConfig)
    scaffold: ScaffoldConfig = field(default_factory=ScaffoldConfig)
    krum: KrumConfig = field(default_factory=KrumConfig)
    trimmed_mean: TrimmedMeanConfig = field(default_factory=TrimmedMeanConfig)
    centered_clipping: CenteredClippingConfig = field(
        default_factory=CenteredClippingConfig
    )
    dp: DpConfig = field(default_factory=DpConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    heterogeneity: HeterogeneityConfig = field(default_factory=HeterogeneityConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    fedbuff: FedBuffConfig = field(default_factory=FedBuffConfig)

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's ``context.run_config`` (hyphenated keys) and validate.

        Flower already refuses ``--run-config`` keys that pyproject.toml lacks; a key
        here that RunConfig lacks means the two drifted apart, and is an error too.
        """
        flat: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        for key, raw in run_config.items():
            group, dot, _ = key.partition(".")
            if dot and group in GROUPS:
                nested[group][key] = raw
            elif dot:
                raise ConfigError(key, f"unknown table {group!r}")
            else:
                flat[key] = raw
        values = _parse(cls, flat, prefix="")
        for group, raws in nested.items():
            kind = GROUPS[group]
            values[group.replace("-", "_")] = kind(
                **_parse(kind, raws, prefix=f"{group}.")
            )
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from ``dataclasses.asdict`` output (a run folder's ``config.json``)
        and validate. Fields it lacks (a folder written before they existed) take
        their defaults; a field RunConfig lacks is an error naming it."""
        names = {item.name for item in dataclasses.fields(cls)}
        for name in values.keys() - names:
            raise ConfigError(name.replace("_", "-"), "unknown key")
        fields = dict(values)
        for group, kind in GROUPS.items():
            name = group.replace("-", "_")
            if isinstance(fields.get(name), Mapping):
                known = {item.name for item in dataclasses.fields(kind)}
                for sub in fields[name].keys() - known:
                    raise ConfigError(f"{group}.{sub.replace('_', '-')}", "unknown key")
                fields[name] = kind(**fields[name])
        config = cls(**fields)
        config.validate()
        return config

    def to_flower(self) -> dict[str, Any]:
        """The flat, hyphenated mapping Flower would pass (``fedprox.mu`` etc.)."""
        flat: dict[str, Any] = {}
        for name, value in dataclasses.asdict(self).items():
            key = name.replace("_", "-")
            if isinstance(value, dict):
                for sub, sub_value in value.items():
                    flat[f"{key}.{sub.replace('_', '-')}"] = sub_value
            else:
                flat[key] = value
        return flat

    def run_to_resume(self) -> Path:
        """The run folder ``resume = true`` continues: ``resume-dir``, else the
        ``latest`` run under ``output-dir``."""
        folder = self.resume_dir or str(Path(self.output_dir) / "latest")
        return Path(folder).expanduser().resolve()

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some fields changed (for tests and scripts)."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        for item in dataclasses.fields(self):
            if item.type in ("int", "float"):
                _finite_number(item.name.replace("_", "-"), getattr(self, item.name))
        _positive_int("num-server-rounds", self.num_server_rounds)
        _fraction("fraction-fit", self.fraction_fit, allow_zero=False)
        _fraction("fraction-evaluate", self.fraction_evaluate, allow_zero=True)
        _positive_int("min-fit-clients", self.min_fit_clients)
        _positive_int("min-available-clients", self.min_available_clients)
        if self.min_available_clients < self.min_fit_clients:
            raise ConfigError(
                "min-available-clients",
                f"must be >= min-fit-clients ({self.min_fit_clients}), "
                f"got {self.min_available_clients}",
            )
        _non_negative("min-available-timeout", self.min_available_timeout)
        _non_negative("round-timeout", self.round_timeout)
        _positive_int("local-epochs", self.local_epochs)
        if self.batch_size < 0:
            raise ConfigError(
                "batch-size",
                f"must be >= 1, or 0 for the whole local dataset; got "
                f"{self.batch_size}",
            )
        if not self.learning_rate > 0:
            raise ConfigError("learning-rate", f"must be > 0, got {self.learning_rate}")
        _one_of("model", self.model, MODELS)
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("partitioner", self.partitioner, PARTITIONERS)
        _one_of("partition-source", self.partition_source, PARTITION_SOURCES)
        if self.num_partitions < 0:
            raise ConfigError(
                "num-partitions",
                f"must be >= 0 (0 = one per node), got {self.num_partitions}",
            )
        if self.num_partitions and self.partition_source != "server":
            raise ConfigError(
                "num-partitions",
                "only the server can deal partitions to nodes; with "
                "partition-source = 'node' each node's --node-config says it",
            )
        if self.clients_per_message < 0:
            raise ConfigError(
                "clients-per-message",
                f"must be >= 0 (0 = chosen by the server), got "
                f"{self.clients_per_message}",
            )
        if self.clients_per_message > 1 and self.partition_source != "server":
            raise ConfigError(
                "clients-per-message",
                "only the server can deal several partitions to one node; with "
                "partition-source = 'node' each node trains its own",
            )
        if self.clients_per_message > 1 and self.secagg.enabled:
            raise ConfigError(
                "clients-per-message",
                "SecAgg+ runs its protocol (key shares, masks) once per node, so "
                "each client needs a message of its own: use 1 or 0",
            )
        if not 0 <= self.stop_at_accuracy <= 1:
            raise ConfigError(
                "stop-at-accuracy",
                f"must be in [0, 1] (0 = off), got {self.stop_at_accuracy}",
            )
        if not self.dirichlet_alpha > 0:
            raise ConfigError(
                "dirichlet-alpha", f"must be > 0, got {self.dirichlet_alpha}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(
                "val-fraction", f"must be in [0, 1), got {self.val_fraction}"
            )
        if self.fraction_evaluate > 0 and self.val_fraction == 0:
            raise ConfigError(
                "val-fraction",
                "must be > 0 when fraction-evaluate > 0: clients evaluate on the "
                "share of their partition it holds out",
            )
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")
        if self.data_dir and not Path(self.data_dir).expanduser().is_dir():
            raise ConfigError(
                "data-dir",
                f"directory {self.data_dir!r} does not exist "
                '(use "" to download the dataset with torchvision)',
            )
        if not self.output_dir:
            raise ConfigError("output-dir", "must not be empty")
        if self.resume_dir and not self.resume:
            raise ConfigError("resume-dir", "is only read with resume = true")
        # The strategy's name and what it can honour are checked by the registry
        # (strategies.strategy_class), which the server asks: the client never
        # imports a strategy.
        for group in GROUPS:
            section = getattr(self, group.replace("-", "_"))
            for item in dataclasses.fields(section):
                if item.type in ("int", "float"):
                    _finite_number(
                        f"{group}.{item.name.replace('_', '-')}",
                        getattr(section, item.name),
                    )
            section.validate(lambda name, group=group: f"{group}.{name}")
        dp, secagg = self.dp, self.secagg
        if self.heterogeneity.enabled:
            _check_heterogeneity(self)
        if self.selection.policy != "uniform":
            _check_selection(self)
        if (
            dp.local
            and secagg.enabled
            and 4 * dp.noise_multiplier * dp.clip_norm > (secagg.clipping_range)
        ):
            raise ConfigError(
                "secagg.clipping-range",
                f"local DP noise has std dp.noise-multiplier * dp.clip-norm = "
                f"{dp.noise_multiplier * dp.clip_norm:g} per coordinate; SecAgg+ "
                f"clips coordinates at {secagg.clipping_range:g}, which must be at "
                "least 4 stds or the clipping would change the noise the accountant "
                "assumes",
            )


def _check_heterogeneity(config: RunConfig) -> None:
    """What the simulated devices cannot be combined with, and why."""
    if config.partition_source != "server":
        raise ConfigError(
            "heterogeneity.enabled",
            "simulates devices in the simulation; with partition-source = "
            f"{config.partition_source!r} the nodes are real devices with real times",
        )
    if config.secagg.enabled:
        raise ConfigError(
            "heterogeneity.enabled",
            "cannot drop late clients under SecAgg+: the server only sees their sum",
        )
    if config.dp.central or config.dp.local:
        raise ConfigError(
            "heterogeneity.enabled",
            "the DP accountant's sampling rate assumes every sampled client is "
            "aggregated; a deadline or over-commitment drops some",
        )


def _check_selection(config: RunConfig) -> None:
    """What a selection policy other than uniform cannot be combined with."""
    if config.partition_source != "server":
        raise ConfigError(
            "selection.policy",
            "chooses among partitions the server deals; with partition-source = "
            "'node' use 'uniform'",
        )
    if config.dp.central or config.dp.local:
        raise ConfigError(
            "selection.policy",
            "the DP accountant assumes uniform sampling (its privacy amplification); "
            "a policy that prefers some clients voids it: use 'uniform' with dp.*",
        )
    if config.selection.policy == "oort" and not config.heterogeneity.enabled:
        raise ConfigError(
            "selection.policy",
            "'oort' weighs clients by their observed round times, which the "
            "simulated devices give: set heterogeneity.enabled = true",
        )


def _parse(kind: type, raws: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Field values of dataclass ``kind`` from hyphenated keys (``prefix`` + name)."""
    fields = {
        f.name: f
        for f in dataclasses.fields(kind)
        if f.type in ("int", "float", "str", "bool")
    }
    values: dict[str, Any] = {}
    for key, raw in raws.items():
        name = key.removeprefix(prefix).replace("-", "_")
        if name not in fields:
            raise ConfigError(key, f"unknown key (not a field of {kind.__name__})")
        values[name] = _coerce(key, raw, fields[name].type)
    return values


def _coerce(key: str, raw: Any, type_name: Any) -> Any:
    """Convert a TOML/CLI value to the field's type, or fail naming the key."""
    kind = {"int": int, "float": float, "str": str, "bool": bool}[str(type_name)]
    if kind is bool:
        if not isinstance(raw, bool):
            raise ConfigError(key, f"expected true or false, got {raw!r}")
        return raw
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(key, f"expected a string, got {raw!r}")
        return raw
    _finite_number(key, raw)
    if kind is int:
        if float(raw) != int(raw):
            raise ConfigError(key, f"expected a whole number, got {raw!r}")
        return int(raw)
    return float(raw)


def _finite_number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")


def _positive_int(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(key, f"must be >= 1, got {value}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")


def _unit_interval(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(key, f"must be in [0, 1), got {value}")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(key, f"must be >= 0, got {value}")


def _fraction(key: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigError(key, f"must be in {interval}, got {value}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            key, f"unknown value {value!r}; allowed: {', '.join(map(repr, allowed))}"
        )
