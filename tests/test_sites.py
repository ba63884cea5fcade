"""A deployed site's setup (node config, backbone weights) and the credentials of a federation, without processes."""

import ipaddress
import os
import re
import stat
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from helpers import TINY, save_tiny_backbone, tiny_overrides

from aim_core.federated.local import SiteConfigError, client_setup
from aim_core.federated.settings import FederatedSettings, default_run_config
from aim_core.model.factory import build_model
from aimfl.credentials import make_site_key, make_tls_certificates
from aimfl.deployment import INSECURE_WARNING, Federation
from client.client_app import errors_stay_on_site


@pytest.fixture
def site(synthetic_world, tmp_path):
    weights = save_tiny_backbone(synthetic_world, tmp_path / "backbone.pth")
    settings = FederatedSettings.from_run_config({
        **default_run_config(), "config": TINY, "overrides": " ".join(tiny_overrides(synthetic_world, str(tmp_path))),
        "out-dir": str(tmp_path), "local-val-fraction": 0.2})
    node_config = {"list-file": str(synthetic_world / "train.txt"), "video-root": str(synthetic_world),
                   "backbone-weights": str(weights)}
    return settings, node_config


def test_a_site_reads_its_list_video_root_and_weights_from_the_node_config(site):
    settings, node_config = site
    cfg, data = client_setup(node_config, settings)
    assert cfg.model.backbone.checkpoint == node_config["backbone-weights"] and cfg.model.backbone.pretrained is None
    assert data.root == node_config["video-root"] and data.source == node_config["list-file"]
    assert data.stream == zlib.crc32(Path(node_config["list-file"]).read_bytes())
    assert len(data.train) + len(data.val) == 30 and len(data.val) == 6


@pytest.mark.parametrize("key", ["list-file", "video-root", "backbone-weights"])
def test_a_missing_node_config_key_is_named(site, key):
    settings, node_config = site
    del node_config[key]
    with pytest.raises(SiteConfigError, match=f"lacks {key}"):
        client_setup(node_config, settings)


@pytest.mark.parametrize("key", ["list-file", "video-root", "backbone-weights"])
def test_a_missing_path_is_named_with_its_key(site, key):
    settings, node_config = site
    node_config[key] = "/nonexistent/site/path"
    with pytest.raises(SiteConfigError, match=f"node config {key}='/nonexistent/site/path'") as raised:
        client_setup(node_config, settings)
    assert raised.value.public.startswith(f"node config {key}: no such") and "/nonexistent" not in raised.value.public


def test_a_client_failure_reaches_the_server_without_the_site_paths(site):
    settings, node_config = site
    node_config["list-file"] = "/secret/site/videos.txt"

    def handler(msg, context):
        return client_setup(context.node_config, settings)

    with pytest.raises(RuntimeError) as raised:
        errors_stay_on_site(None, SimpleNamespace(node_config=node_config), handler)
    assert str(raised.value) == ("SiteConfigError on the site: node config list-file: no such file on this site "
                                 "(the site's video list (`path label` lines))")

    def failing(msg, context):
        raise ValueError("cannot read /secret/site/videos.txt")

    with pytest.raises(RuntimeError, match="ValueError on the site") as raised:
        errors_stay_on_site(None, None, failing)
    assert "/secret" not in str(raised.value)


def test_a_node_without_site_keys_or_partition_id_says_how_to_start_it(site):
    settings, _ = site
    with pytest.raises(SiteConfigError, match="--node-config 'list-file="):
        client_setup({}, settings)


def test_the_site_weights_are_loaded_memory_mapped_and_match_the_file(site, monkeypatch):
    settings, node_config = site
    cfg, _ = client_setup(node_config, settings)
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(torch.utils.serialization.config.load.mmap)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = build_model(cfg.model)
    assert loads == [True]
    saved = real_load(node_config["backbone-weights"])
    embed = saved["patch_embed.proj.weight"]
    assert any(torch.equal(p, embed) for p in model.state_dict().values())


def test_site_keys_are_openssh_ecdsa_p384_owner_only_and_never_overwritten(tmp_path):
    private, public = make_site_key(str(tmp_path / "site0"))
    key = load_ssh_private_key(Path(private).read_bytes(), password=None)  # what flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert Path(public).read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    with pytest.raises(FileExistsError, match="already exist"):
        make_site_key(str(tmp_path / "site0"))


def test_the_superlink_certificate_is_signed_by_the_ca_for_the_named_hosts(tmp_path):
    paths = make_tls_certificates(str(tmp_path), ["127.0.0.1", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(Path(paths["ca.crt"]).read_bytes())
    server = x509.load_pem_x509_certificate(Path(paths["server.pem"]).read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    # localhost: the SuperLink on the operator's loopback, behind the Fleet-only proxy
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    key = load_pem_private_key(Path(paths["server.key"]).read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    assert all(stat.S_IMODE(os.stat(paths[name]).st_mode) == 0o600 for name in ("ca.key", "server.key"))


def test_a_federation_needs_certificates_unless_insecure_is_asked_for_and_then_warns(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs TLS certificates"):
        Federation(str(tmp_path / "a"), tls=None)
    federation = Federation(str(tmp_path / "b"), tls=None, insecure=True)
    assert INSECURE_WARNING in capsys.readouterr().err
    with pytest.raises(ValueError, match="authentication needs TLS"):
        federation.start_superlink(auth=True)
    assert "insecure = true" in Path(os.path.join(federation.flwr_home, "config.toml")).read_text()
    assert federation.services == {}  # nothing started


def test_flower_programs_are_found_beside_the_interpreter_before_path(tmp_path, monkeypatch):
    from aimfl.processes import ProgramNotFoundError, find_program, interpreter_bin, program_env

    for name in ("flwr", "only-on-path"):  # a decoy flwr, and a program only PATH has
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # an unactivated environment: its scripts are not on PATH
    assert find_program("flwr") == os.path.join(interpreter_bin(), "flwr")
    assert find_program("only-on-path") == str(tmp_path / "only-on-path")
    assert program_env()["PATH"].split(os.pathsep)[:2] == [interpreter_bin(), str(tmp_path)]
    with pytest.raises(ProgramNotFoundError) as raised:
        find_program("flower-nonexistent")
    assert interpreter_bin() in str(raised.value) and str(tmp_path) in str(raised.value)


def test_the_proxy_forwards_exactly_the_routes_a_supernode_calls():
    """FLEET_ROUTES against the paths flwr's own SuperNode client posts to: a new route in a new flwr is named."""
    import re

    import flwr.supernode.fleet_http_client as client

    from aimfl.deployment import FLEET_ROUTES

    with open(client.__file__) as f:
        called = set(re.findall(r'path="/v1/fleet/([a-z-]+)"', f.read()))
    assert called == set(FLEET_ROUTES)


def test_make_proxy_config_writes_an_nginx_config_that_serves_the_fleet_api_only(tmp_path, capsys):
    from aimfl import cli
    from aimfl.deployment import FLEET_ROUTES

    make_tls_certificates(str(tmp_path / "pki"), ["superlink.example.org"])
    assert cli.main(["make-proxy-config", "--tls", str(tmp_path / "pki"), "--workdir", str(tmp_path / "proxy"),
                     "--listen", "0.0.0.0:9092", "--superlink-port", "9093"]) == 0
    config = (tmp_path / "proxy" / "nginx.conf").read_text()
    locations = re.findall(r"location (.*?) \{", config)
    assert locations == [f"~ ^/v1/fleet/({'|'.join(FLEET_ROUTES)})$", "/"]
    assert "return 403;" in config and "limit_except POST" in config
    assert "listen 0.0.0.0:9092 ssl;" in config and "proxy_pass https://127.0.0.1:9093;" in config
    assert "proxy_ssl_verify on;" in config
    assert cli.main(["make-proxy-config", "--tls", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "p2")]) == 2
    assert "make them with aimfl make-certs" in capsys.readouterr().err
