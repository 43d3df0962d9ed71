"""Test doubles for Flower's server side: a node the strategy can talk to."""

from __future__ import annotations

import threading

from flwr.common import (
    Code,
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    ReconnectIns,
    Scalar,
    Status,
)
from flwr.server.client_proxy import ClientProxy


class FakeNode(ClientProxy):
    """A connected node that answers get_properties with its partition id."""

    def __init__(
        self,
        cid: str,
        partition_id: int = -1,
        fail: bool = False,
        num_partitions: int | None = None,
    ) -> None:
        super().__init__(cid)
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.fail = fail
        self.property_calls = 0
        self._lock = threading.Lock()

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        with self._lock:
            self.property_calls += 1
        if self.fail:
            raise ConnectionError("node went away")
        properties: dict[str, Scalar] = {"partition-id": self.partition_id}
        if self.num_partitions is not None:
            properties["num-partitions"] = self.num_partitions
        return GetPropertiesRes(status=Status(Code.OK, ""), properties=properties)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        raise NotImplementedError

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        raise NotImplementedError

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        raise NotImplementedError

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        raise NotImplementedError
