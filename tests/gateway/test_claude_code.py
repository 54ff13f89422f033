"""The real Claude Code CLI (npm, pinned) in a "sandbox" holding only the sealed key, through the
gateway's https:// proxy URL, against a local TLS stand-in of the Anthropic API.

The sandbox gets exactly what the seed gives an E2B sandbox, minus the node wrapper:
`ANTHROPIC_API_KEY=SEALED_...`, `HTTPS_PROXY=https://sess:tok@gateway`, and the CA variable.
The CLI is installed once into ~/.cache/oshu-vault (npm registry) and reused.
"""

from __future__ import annotations

from pathlib import Path

from oshu_testkit.anthropic_standin import REPLY, AnthropicStandin
from oshu_testkit.claude_code import home_files, run_claude
from oshu_testkit.gateway_process import GatewayProcess
from oshu_testkit.leaks import assert_no_secret

REAL_KEY = "sk-ant-api03-gateway-test-0123456789abcdef"


def test_claude_code_cli_holds_only_the_sealed_key(claude: Path, tmp_path: Path) -> None:
    with (
        AnthropicStandin(REAL_KEY) as api,
        GatewayProcess(
            None,
            extra_args=[
                "--upstream-ca-file",
                str(api.ca_file),
                "--connect-to",
                f"api.anthropic.com:443:127.0.0.1:{api.port}",
            ],
        ) as gw,
    ):
        s = gw.create_session({"secrets": {"ANTHROPIC_API_KEY": REAL_KEY}})  # hosts from the catalog
        sealed = s["sealed_secrets"]["ANTHROPIC_API_KEY"]
        home = tmp_path / "home"
        home.mkdir()
        env = {
            "ANTHROPIC_API_KEY": sealed,
            "HTTPS_PROXY": s["proxy_url"],
            "HTTP_PROXY": s["proxy_url"],
            "NODE_EXTRA_CA_CERTS": str(gw.ca_file),
        }
        r = run_claude(claude, env, home)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert REPLY + sealed in r.stdout  # the stand-in's echo of the real key came back as the sealed token
        messages = [x for x in api.seen if x["path"] == "/v1/messages"]
        assert messages and all(x["x-api-key"] == REAL_KEY for x in messages)
        audit = [x for x in gw.log_records() if x.get("path", "").startswith("/v1/messages")]
        assert audit and all(x["session"] == s["session_id"] for x in audit)
        texts: dict[str, str | bytes] = {"cli stdout": r.stdout, "cli stderr": r.stderr, "gateway log": gw.log_text()}
        texts |= home_files(home)  # whatever the CLI wrote in its home (config, transcripts)
        assert_no_secret(texts, [REAL_KEY])
