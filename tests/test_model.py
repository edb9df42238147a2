"""MultiTaskModel: heads and pooling, routing, registration with the Auto classes, freezing errors."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, RobertaConfig, RobertaModel

from manyheads import Classification, MultiTaskConfig, MultiTaskModel, Regression


def spec(name, pooling="auto", type_="classification"):
    if type_ == "classification":
        return Classification(name=name, labels=["a", "b", "c"], pooling=pooling, max_length=16).spec()
    return Regression(name=name, pooling=pooling, max_length=16).spec()


def model_with(encoder, *specs):
    return MultiTaskModel(MultiTaskConfig(encoder=encoder.config.to_dict(), tasks=list(specs)), encoder=encoder)


def test_pooling_variants_compute_what_they_say(tiny_encoder):
    model = model_with(tiny_encoder, spec("p", "pooler"), spec("c", "cls"), spec("m", "mean"),
                       spec("x", "max")).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 10, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model.encoder(input_ids=ids, attention_mask=mask)
        hidden, pooled = out.last_hidden_state, out.pooler_output
        heads = model.heads
        expected = {
            "p": heads["p"].classifier(pooled),
            "c": heads["c"].classifier(torch.tanh(heads["c"].dense(hidden[:, 0]))),
            "m": heads["m"].classifier((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)),
            # row 2's max over its 3 real tokens only, written out without masking
            "x": heads["x"].classifier(torch.stack([hidden[0].max(0).values, hidden[1, :3].max(0).values])),
        }
        logits = model.forward_all(input_ids=ids, attention_mask=mask)
    assert not torch.allclose(hidden[1].max(0).values, hidden[1, :3].max(0).values)  # padding would have won
    for name in "pcmx":
        assert logits[name].shape == (2, 3)
        assert torch.allclose(logits[name], expected[name], atol=1e-6), name


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_mean_and_max_pooling_ignore_padding(tiny_encoder, pooling):
    model = model_with(tiny_encoder, spec("m", pooling)).eval()
    short = torch.tensor([[2, 7, 3]])
    padded = torch.tensor([[2, 7, 3, 0, 0]])
    with torch.no_grad():
        a = model(input_ids=short, attention_mask=torch.ones_like(short)).logits
        b = model(input_ids=padded, attention_mask=(padded != 0).long()).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_auto_pooling_without_pooler_uses_cls_head():
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=20, max_position_embeddings=40)
    encoder = RobertaModel(config, add_pooling_layer=False)
    model = model_with(encoder, spec("r"))
    assert model.heads["r"].pooling == "cls"
    with pytest.raises(ValueError, match="task 'x': pooling 'pooler' needs an encoder with a pooler"):
        model_with(RobertaModel(config, add_pooling_layer=False), spec("x", "pooler"))


def test_routing_and_errors(tiny_encoder):
    model = model_with(tiny_encoder, spec("a"), spec("b", type_="regression"))
    ids = torch.tensor([[2, 7, 3]])
    assert model(input_ids=ids, task="a").logits.shape == (1, 3)
    assert model(input_ids=ids, task="b").logits.shape == (1, 1)
    with pytest.raises(ValueError, match="unknown task 'z'"):
        model(input_ids=ids, task="z")
    with pytest.raises(ValueError, match="pass task=<name>"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="must hold one task"):
        model(input_ids=ids, task=["a", "b"])


def test_registered_with_auto_classes(tiny_encoder, tmp_path):
    model = model_with(tiny_encoder, spec("a"))
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MultiTaskConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MultiTaskModel)


def test_freeze_more_layers_than_exist(tiny_encoder):
    model = model_with(tiny_encoder, spec("a"))
    with pytest.raises(ValueError, match="freeze.layers is 5 but the encoder has 2 layers"):
        model.freeze(layers=5)
