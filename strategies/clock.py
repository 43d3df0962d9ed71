"""The server's side of simulated devices: who would have finished a round, and when.

With ``heterogeneity.enabled`` every partition has a device (``fl_app.heterogeneity``,
drawn from the run's seed, so the same seed gives the same devices). The clients
still train at simulation speed; the clock prices each reply in virtual seconds
(download of the weights it was sent, E·n_k of compute, or the share of it the
client reports with FedProx's partial work, upload of the bytes it sent back, so a
compressed reply is cheaper), then keeps what a server with a deadline
and over-commitment would have kept (``round_timing``): the first K to finish by the
deadline. The round ends when the server stops waiting; the history's
``virtual_time_s`` adds these ends up.

The devices are the simulation's ground truth: the strategy's selection never reads
them (FedScale's simulator works the same way).
"""

from __future__ import annotations

from flwr.common import FitRes
from flwr.server.client_proxy import ClientProxy

from fl_app import keys
from fl_app.config import RunConfig
from fl_app.heterogeneity import DeviceProfile, client_seconds, device_profiles
from fl_app.heterogeneity.clock import round_timing
from fl_app.results import RoundRecord
from strategies.metrics import parameters_nbytes

Reply = tuple[ClientProxy, FitRes]


class SystemClock:
    """Prices a round's replies on the virtual clock and keeps the on-time ones."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.elapsed = 0.0  # virtual seconds of the rounds so far (state_dict)
        #: The last round's replies' virtual seconds, by partition (what a server
        #: observes of its clients' speed: ``strategies.selection``).
        self.last_seconds: dict[int, float] = {}

    def devices(self, num_partitions: int) -> tuple[DeviceProfile, ...]:
        """Partition p's device is ``devices(K)[p]``, the same for a seed (and the
        one its client sees: ``fl_app.client``)."""
        spec = self.config.heterogeneity.spec()
        return device_profiles(spec, num_partitions, self.config.seed)

    def seconds(self, device: DeviceProfile, reply: FitRes, bytes_down: int) -> float:
        """Virtual seconds from the round's start until this reply reaches the
        server."""
        work = reply.metrics.get(keys.WORK_DONE, 1.0)
        return client_seconds(
            device,
            bytes_down=bytes_down,
            bytes_up=parameters_nbytes(reply.parameters),
            num_examples=reply.num_examples,
            epochs=self.config.local_epochs,
            work=float(work) if isinstance(work, (int, float)) else 1.0,
        )

    def online(self, num_partitions: int) -> list[int]:
        """The partitions whose devices are online now, at the start of the next
        round (``heterogeneity.online-fraction``)."""
        return [
            partition
            for partition, device in enumerate(self.devices(num_partitions))
            if device.is_online(self.elapsed)
        ]

    def keep_on_time(
        self,
        replies: list[tuple[int, Reply]],
        *,
        num_partitions: int,
        bytes_down: int,
        keep: int,
        record: RoundRecord,
    ) -> list[Reply]:
        """``replies`` (partition, reply) in their order, less the late ones: past
        ``round-deadline``, or beyond the first ``keep`` to finish (``keep`` = K,
        the clients a round needs before over-commitment). Counts them and advances
        the clock to the round's end."""
        devices = self.devices(num_partitions)
        seconds = self.last_seconds = {
            partition: self.seconds(devices[partition], reply, bytes_down)
            for partition, (_, reply) in replies
        }
        deadline = self.config.heterogeneity.round_deadline
        timing = round_timing(
            seconds,
            deadline=deadline if deadline > 0 else None,
            keep=keep,
            partial_work=False,
        )
        kept = set(timing.finished)
        record.clients_late = len(replies) - len(kept)
        self.elapsed += timing.round_seconds
        record.virtual_time_s = self.elapsed
        return [reply for partition, reply in replies if partition in kept]
