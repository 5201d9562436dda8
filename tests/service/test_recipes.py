"""The recipe catalog endpoints and submission by recipe name, over real HTTP."""

from __future__ import annotations

from celif_core.recipes import RECIPES


def test_catalog_lists_every_recipe_and_reads_one_by_name(client):
    r = client.get("/api/v1/recipes")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["name"] for i in items] == list(RECIPES)
    one = client.get("/api/v1/recipes/paper/seq_mnist-83k")
    assert one.status_code == 200
    body = one.json()
    assert body["spec"]["model"]["hidden"] == [64, 88, 88]
    assert body["reference"] == {
        "paper": {"metric": "test_accuracy", "value": 0.9819}, "neuroseqbench": None
    }  # fmt: skip
    assert client.get("/api/v1/recipes/paper/nope").status_code == 404


def test_submit_by_recipe_name_with_overrides(client):
    r = client.post(
        "/api/v1/jobs",
        json={"recipe": "paper/ps_mnist-83k", "name": "reproduce:paper/ps_mnist-83k",
              "training": {"max_epochs": 3}, "task": {"params": {"permutation_seed": 7}}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    job = r.json()
    spec = job["spec"]
    assert spec["recipe"] == "paper/ps_mnist-83k" and job["name"] == "reproduce:paper/ps_mnist-83k"
    assert spec["training"]["max_epochs"] == 3 and spec["training"]["lr_schedule"] == "step"
    assert spec["task"]["params"] == {**RECIPES["paper/ps_mnist-83k"].spec["task"]["params"],
                                      "permutation_seed": 7}  # fmt: skip
    assert job["progress"]["max_steps"] == 692  # ceil(3 * 59000 / 256)


def test_unknown_recipe_and_bad_override_are_422(client):
    r = client.post("/api/v1/jobs", json={"recipe": "paper/nope"})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "recipe"] and "demo/adding-tiny" in err["msg"]
    r = client.post("/api/v1/jobs", json={"recipe": "demo/adding-tiny", "training": {"lr": -1}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "training", "lr"]
