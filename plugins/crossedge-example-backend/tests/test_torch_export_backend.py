"""The example backend passes crossedge-core's backend conformance suite and resolves from a spec."""

import crossedge_example_backend
import pytest
import torch
from crossedge_example_backend import TorchExportBackend

from crossedge.core import get_registry, registered
from crossedge.core.backends import resolve_backend
from crossedge.core.conformance.backend import BackendConformance, small_cnn
from crossedge.core.contracts.backend import BackendCapabilityError


class TestTorchExport(BackendConformance):
    backend_factory = TorchExportBackend


class TestTorchExportStrict(BackendConformance):
    """The strict (TorchDynamo) capture passes the same checks on the CNN."""

    backend_factory = staticmethod(lambda: TorchExportBackend(strict=True))

    def test_parity_tiny_bert(self, backend):
        pytest.skip("the non-strict class covers the encoder; strict capture is checked on the CNN")


def test_the_class_registers_through_the_hook_and_builds_from_a_spec():
    with registered(crossedge_example_backend, name="example-backend-under-test"):
        assert get_registry("backend").get("export") is TorchExportBackend
        backend = resolve_backend("torch-export:strict=true", purpose="a static forward")
        assert type(backend) is TorchExportBackend and backend.strict is True
        with pytest.raises(BackendCapabilityError, match=r"'torch-export' cannot be used for specdec bench.*KV cache"):
            resolve_backend("torch-export", purpose="specdec bench", dynamic_shapes=True, kv_cache_decoding=True)


def test_the_prepared_graph_is_a_new_module_with_the_same_outputs():
    model = small_cnn()
    x = torch.randn(2, 1, 8, 8)
    prepared = TorchExportBackend().prepare(model, (x,))
    assert prepared.module is not model and isinstance(prepared.module, torch.nn.Module)
    assert torch.equal(prepared(x), model(x).detach())
