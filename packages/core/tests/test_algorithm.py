"""The domain-algorithm contract: erm passes the conformance suite; hyperparameters, registration, files."""

import pytest
import torch

from crossedge.core import hookimpl, registered
from crossedge.core.builtins.algorithms import ERM
from crossedge.core.conformance.algorithm import AlgorithmConformance, easy_problem
from crossedge.core.contracts.algorithm import (
    AlgorithmError,
    DomainAlgorithm,
    HParam,
    build_algorithm,
    get_algorithm,
    load_algorithm,
    parse_algorithm_spec,
)
from crossedge.core.specs import Spec, SpecError


class TestERMConforms(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return get_algorithm("erm")


class MeanLogits(DomainAlgorithm):
    """A third-party algorithm: a linear layer on the time-averaged window, plain SGD."""

    name = "mean-logits"
    description = "linear classifier on channel means"
    HPARAMS = {"lr": HParam(0.5, lambda rng: float(rng.uniform(0.1, 1.0))), "bias": HParam(True, lambda rng: True)}

    def __init__(self, input_shape, num_classes, num_domains, hparams=None, seed=0):
        super().__init__(input_shape, num_classes, num_domains, hparams, seed)
        with self.seeded():
            self.linear = torch.nn.Linear(self.input_shape[1], num_classes, bias=self.hparams["bias"])

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = torch.nn.functional.cross_entropy(self.linear(x.mean(1)), y)
        self.linear.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in self.linear.parameters():
                p -= self.hparams["lr"] * p.grad
        return {"loss": float(loss.detach())}

    def predict(self, x):
        with torch.no_grad():
            return self.linear(x.mean(1))


class TestThirdPartyAlgorithmConforms(AlgorithmConformance):
    @pytest.fixture
    def algorithm_class(self):
        return MeanLogits


class AlgorithmPlugin:
    @hookimpl
    def register_algorithms(self, register):
        register(MeanLogits, aliases=("ml",))


def test_erm_is_registered_through_the_hook_by_a_builtin_plugin():
    from crossedge.core import get_registry

    entry = get_registry("algorithm").entry("erm")
    assert entry.obj is ERM and entry.plugin == "crossedge.core.builtins.algorithms"


def test_saved_third_party_algorithm_loads_by_its_registered_name(tmp_path):
    algorithm = MeanLogits((8, 2), 2, 1, {"lr": 0.1})
    path = algorithm.save(tmp_path / "m.safetensors")
    with registered(AlgorithmPlugin(), name="algo-plugin"):
        assert get_algorithm("ml") is MeanLogits
        restored = load_algorithm(path)
    assert isinstance(restored, MeanLogits) and restored.hparams == {"lr": 0.1, "bias": True}
    with pytest.raises(AlgorithmError, match="holds algorithm 'mean-logits', not 'erm'"):
        load_algorithm(path, ERM)


def test_hparams_are_coerced_to_the_declared_type_or_refused():
    assert ERM((8, 2), 2, 1, {"lr": 1}).hparams["lr"] == 1.0
    with pytest.raises(AlgorithmError, match="'width' of algorithm 'erm' must be int, got 2.5"):
        ERM((8, 2), 2, 1, {"width": 2.5})
    with pytest.raises(AlgorithmError, match="must be bool"):
        MeanLogits((8, 2), 2, 1, {"bias": 1})
    with pytest.raises(AlgorithmError, match=r"'lrr' \(did you mean 'lr'\?\); valid: lr, weight_decay, width"):
        ERM((8, 2), 2, 1, {"lrr": 0.1})


def test_a_new_hparam_leaves_the_draws_of_the_others_alone():
    class ERMPlus(ERM):
        HPARAMS = {**ERM.HPARAMS, "penalty": HParam(1.0, lambda rng: float(rng.uniform(0, 10)))}

    for seed in range(4):
        plus = ERMPlus.random_hparams(seed)
        assert {k: plus[k] for k in ERM.HPARAMS} == ERM.random_hparams(seed)


def test_state_that_does_not_match_is_refused_by_name():
    small, wide = ERM((8, 2), 2, 1, {"width": 16}), ERM((8, 2), 2, 1, {"width": 32})
    with pytest.raises(AlgorithmError, match="shape"):
        small.load_state_dict(wide.state_dict())
    state = small.state_dict()
    state["network.extra"] = torch.zeros(1)
    with pytest.raises(AlgorithmError, match=r"unexpected \['network.extra'\]"):
        small.load_state_dict(state)


def test_building_an_algorithm_leaves_the_global_torch_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ERM((8, 2), 2, 1, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_different_seeds_give_different_initial_networks():
    x = easy_problem()[0][0]
    assert not torch.equal(ERM((16, 3), 3, 2, seed=0).predict(x), ERM((16, 3), 3, 2, seed=1).predict(x))


def test_cli_lists_algorithms_and_shows_seeded_hparams(cli):
    import json

    with registered(AlgorithmPlugin(), name="algo-plugin"):
        rows = {r["name"]: r for r in json.loads(cli("algorithms", "list", "--json").stdout)}
    assert rows["erm"]["plugin"] == "crossedge.core.builtins.algorithms"
    assert rows["erm"]["hparams"]["lr"] == {"default": 0.001, "type": "float", "help": "Adam learning rate"}
    assert rows["mean-logits"]["aliases"] == ["ml"]
    info = json.loads(cli("algorithms", "info", "erm", "--seed", "4", "--json").stdout)
    assert info["random_hparams"] == {"seed": 4, **ERM.random_hparams(4)}
    result = cli("algorithms", "info", "emr")
    assert result.exit_code == 1 and "did you mean 'erm'" in result.stderr


def test_cli_selects_from_a_records_file(cli, tmp_path):
    import json

    from crossedge.core.selection import Record, append_record

    path = tmp_path / "records.jsonl"
    for lr, val_acc, test_acc in ((0.1, 0.9, 0.4), (0.01, 0.5, 0.8)):
        metrics = {"s0": {"val_acc": val_acc}, "s1": {"acc": test_acc}}
        append_record(path, Record("erm", {"lr": lr}, 0, "s1", 10, metrics))
    result = cli("algorithms", "select", str(path), "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["hparams"], row["test_score"], row["method"]) == ({"lr": 0.1}, 0.4, "training-domain")
    path.write_text("[]\n")
    result = cli("algorithms", "select", str(path))
    assert result.exit_code == 1 and "records.jsonl:1: a record is a JSON object" in result.stderr


def test_an_algorithm_spec_binds_hparams_through_the_one_spec_binder():
    algorithm = build_algorithm("erm:lr=0.001,width=16", input_shape=(8, 2), num_classes=2, num_domains=1, seed=4)
    assert isinstance(algorithm, ERM) and algorithm.seed == 4
    assert algorithm.hparams == {**ERM.default_hparams(), "lr": 0.001, "width": 16}
    assert type(algorithm.hparams["width"]) is int
    # a float hyperparameter written as an integer is still a float; booleans take the spec words
    with registered(AlgorithmPlugin(), name="algo-plugin"):
        cls, hparams = parse_algorithm_spec("ml:lr=1,bias=no")
    assert cls is MeanLogits and hparams == {"lr": 1.0, "bias": False} and type(hparams["lr"]) is float
    # a Spec from Python goes through the same checks
    assert parse_algorithm_spec(Spec("erm", {"backbone": "transformer"}))[1]["backbone"] == "transformer"


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("erm:lrr=0.1", 4, r"algorithm 'erm' has no option 'lrr'; did you mean 'lr'\? its options: backbone, lr,"),
        ("erm:seed=3", 4, r"has no option 'seed'"),  # the seed is the caller's, never a hyperparameter
        ("erm:width=2.5", 10, r"option width takes an integer, got '2.5'"),
        ("erm:lr=fast", 7, r"option lr takes a number, got 'fast'"),
        ("emr:lr=0.1", 0, r"unknown algorithm 'emr'.*did you mean 'erm'"),
    ],
)
def test_a_bad_algorithm_spec_names_the_character_and_the_valid_hparams(text, position, message):
    with pytest.raises(SpecError, match=message) as info:
        build_algorithm(text, input_shape=(8, 2), num_classes=2, num_domains=1)
    assert info.value.position == position and info.value.kind == "algorithm"


def test_cli_info_takes_an_algorithm_spec(cli):
    import json

    result = cli("algorithms", "info", "erm:width=64,lr=0.003", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["values"] == {**ERM.default_hparams(), "width": 64, "lr": 0.003}
    assert info["spec"] == "erm:lr=0.003,width=64"
    assert "width: 32 (int) = 64" in cli("algorithms", "info", "erm:width=64").stdout
    result = cli("algorithms", "info", "erm:widht=64")
    assert result.exit_code == 1 and "character 5" in result.stderr and "did you mean 'width'" in result.stderr
