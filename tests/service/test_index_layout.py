"""A shard's data directory belongs to one shard of one shard count: started as another,
the shard refuses to load it (ids hash elsewhere under another count) and never serves."""

from __future__ import annotations

import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.rpc_status import error_reason
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import running_service, settings_for_test


def shard(data_dir, index: int, count: int):
    return running_service(IndexService, settings_for_test(
        IndexSettings, data_dir=data_dir, shard_index=index, shard_count=count))


def test_a_data_dir_started_under_another_shard_count_is_refused_and_kept(channel_to, tmp_path) -> None:
    ids = [f"item-{n}" for n in range(40) if shard_for_id(f"item-{n}", 2) == 0]
    with shard(tmp_path, 0, 2) as first:
        stub = pb_grpc.IndexServiceStub(channel_to(first.address))
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs", space_id="s@1", dim=4))
        vectors = np.random.default_rng(0).normal(size=(len(ids), 4)).astype("<f4")
        stub.Upsert(pb.UpsertRequest(collection="docs", items=[
            pb.Item(id=i, vector=types_pb2.Vector(data=v.tobytes(), dim=4)) for i, v in zip(ids, vectors)
        ]))
    for index, count in ((0, 3), (1, 2)):
        with shard(tmp_path, index, count) as wrong:
            assert wrong.load_error is not None
            assert "holds shard 0 of 2" in str(wrong.load_error)
            with pytest.raises(Exception) as caught:
                pb_grpc.IndexServiceStub(channel_to(wrong.address)).GetCollection(
                    pb.GetCollectionRequest(name="docs"), timeout=5)
            assert error_reason(caught.value) == "LOAD_FAILED"
    with shard(tmp_path, 0, 2) as again:  # nothing was touched
        assert again.load_error is None
        info = pb_grpc.IndexServiceStub(channel_to(again.address)).GetCollection(
            pb.GetCollectionRequest(name="docs")).collection
        assert info.item_count == len(ids)
