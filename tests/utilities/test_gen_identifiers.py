"""NeoGen stage / synthetic-set names: built by one function, parsed back by its inverse."""
from __future__ import annotations

import itertools

import pytest

from neonet_toolkit.utilities.identifiers import (
    AUTOENCODERS,
    CONDITIONINGS,
    GENERATORS,
    OBJECTIVES,
    GenRunId,
    gen_stage_dir,
    list_synthetic_sets,
    parse_gen_stage_dir,
)


def test_default_names_are_the_names_written_before_the_variants():
    assert gen_stage_dir("ldm") == "ldm" and gen_stage_dir("controlnet") == "controlnet"
    assert gen_stage_dir("synthetic") == "synthetic"
    assert gen_stage_dir("ldm", "vqvae", "rflow") == "ldm_vqvae_rflow"
    assert gen_stage_dir("controlnet", conditioning="mask") == "controlnet_maskonly"
    assert gen_stage_dir("synthetic", "vqvae", generator="dm") == "synthetic_dm_vqvae"


def test_every_variant_round_trips_and_says_its_sampler():
    names = set()
    for ae, obj, cond, gen in itertools.product(AUTOENCODERS, OBJECTIVES, CONDITIONINGS, GENERATORS):
        for stage in ("ldm", "controlnet", "synthetic"):
            try:
                rid = GenRunId(stage, ae, obj, cond, gen)
            except ValueError:
                continue  # conditioning / generator that do not apply to the stage
            assert parse_gen_stage_dir(rid.name) == rid
            assert rid.sampler == {"eps": "ddim", "rflow": "rflow"}[obj]
            names.add(rid.name)
    assert len(names) == 4 + 8 + 12  # ldm: ae x obj; controlnet: x cond; synthetic: controlnet 8 + dm 4
    for other in ("vae", "cls_pattennet_1", "ldm_rflow_vqvae", "synthetic_maskonly_dm", "ldm_maskonly", "gen_evaluation"):
        assert parse_gen_stage_dir(other) is None
    with pytest.raises(ValueError, match="conditioning"):
        GenRunId("ldm", conditioning="mask")
    with pytest.raises(ValueError, match="autoencoder"):
        GenRunId("ldm", autoencoder="vq")


def test_upstream_of_a_set_is_the_matching_stage():
    rid = GenRunId("synthetic", "vqvae", "rflow", "mask", "controlnet")
    assert rid.upstream("controlnet").name == "controlnet_vqvae_rflow_maskonly"
    assert rid.upstream("ldm").name == "ldm_vqvae_rflow"


def test_list_synthetic_sets_finds_only_sets_with_a_manifest(tmp_path):
    for d in ("synthetic__NeoNetPlans", "synthetic_dm_vqvae__NeoNetPlans", "synthetic_rflow__NeoNetPlans",
              "synthetic_bogus__NeoNetPlans"):
        (tmp_path / d / "fold_0").mkdir(parents=True)
        (tmp_path / d / "fold_0" / "manifest.json").write_text("{}", encoding="utf-8")
    (tmp_path / "synthetic_rflow__NeoNetPlans" / "fold_0" / "manifest.json").unlink()
    found = list_synthetic_sets(tmp_path, 0)
    assert sorted(found) == ["synthetic", "synthetic_dm_vqvae"]
    assert found["synthetic_dm_vqvae"].generator == "dm" and found["synthetic_dm_vqvae"].autoencoder == "vqvae"
    assert list_synthetic_sets(tmp_path, 1) == {}
