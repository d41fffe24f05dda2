"""Hub answers become errors a person can act on; transient ones are retried. Driven through the real client."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator

import httpx2
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, JobNotFoundError, OfflineModeIsEnabled
from structlog.testing import capture_logs

from diarist.handlers.errors import CloudError, CloudTransientError, DiaristError
from diarist.handlers.hub_errors import call_hub, describe_hub_error

from conftest import SUITE_TOKEN
from hub_emulator import HubEmulator

TOKEN = SUITE_TOKEN
NS = "alice"
ACTION = "start a Hugging Face Job"
MODEL = "pyannote/speaker-diarization-community-1"


@pytest.fixture
def emu():
    with HubEmulator(token=TOKEN, namespace=NS, kill_grace=0.2) as emulator:
        yield emulator


@pytest.fixture
def api(emu):
    return HfApi(endpoint=emu.url, token=TOKEN)


def run_job(api: HfApi, namespace: str = NS):
    return api.run_job(image="python:3.12", command=["python", "-c", "print(1)"], namespace=namespace)


def hub_error(call, **describe) -> tuple[BaseException, DiaristError]:
    """Make the real client call fail, and return its exception and what it maps to."""
    with pytest.raises(Exception) as info:
        call()
    return info.value, describe_hub_error(info.value, action=describe.pop("action", ACTION), **describe)


def create_requests(emu: HubEmulator) -> list[dict]:
    return [r for r in emu.requests if r["route"] == "jobs.create"]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound but never listening. Held, not
    closed: a port freed and then used could meanwhile be taken by another listener (then nothing is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class TestDescribeUnauthorized:
    def test_wrong_token_on_jobs_says_how_to_set_hf_token(self, emu):
        """A 401 is permanent and the hint says where HF_TOKEN goes and where to make one, never the token."""
        bad = HfApi(endpoint=emu.url, token="hf_wrongWRONGwrong123")
        exc, err = hub_error(lambda: run_job(bad))
        assert type(err) is CloudError and err.status == 401
        assert err.message.startswith(f"could not {ACTION}: ")
        assert "token" in err.message and "HTTP 401" in err.message
        assert "Invalid credentials in Authorization header" in err.message
        assert "HF_TOKEN" in err.hint and "Environment=HF_TOKEN=" in err.hint and "EnvironmentFile=" in err.hint
        assert "https://huggingface.co/settings/tokens" in err.hint
        assert "hf_wrong" not in str(err)

    def test_wrong_token_on_whoami(self, emu):
        """whoami rewrites its 401; the server's words still come from the X-Error-Message header."""
        exc, err = hub_error(HfApi(endpoint=emu.url, token="hf_nope").whoami)
        assert isinstance(exc, HfHubHTTPError)
        assert type(err) is CloudError and err.status == 401
        assert "Invalid credentials" in err.message and "HF_TOKEN" in err.hint

    def test_request_id_is_kept(self, emu):
        """The Hub's request id is quoted so a user can report it; messages stay on one line."""
        exc, err = hub_error(HfApi(endpoint=emu.url, token="hf_nope").whoami)
        assert exc.request_id and f"request id {exc.request_id}" in err.message
        assert "\n" not in str(err)


class TestDescribePlan:
    def test_402_needs_a_plan_or_credits(self, emu, api):
        """A 402 names the plans and credits, points at pricing and billing, and at turning Jobs off."""
        emu.add_fault(route="jobs.create", status=402, message="Payment required")
        _, err = hub_error(lambda: run_job(api))
        assert type(err) is CloudError and err.status == 402
        assert "Hugging Face Jobs need a PRO/Team/Enterprise plan or prepaid credits" in err.message
        assert "HTTP 402: Payment required" in err.message
        assert "https://huggingface.co/pricing" in err.hint and "settings/billing" in err.hint
        assert "HF_JOBS_ENABLED=false" in err.hint

    @pytest.mark.parametrize(
        ("status", "message"),
        [
            (403, "Jobs are only available to PRO users and Team or Enterprise organizations"),
            (400, "Insufficient credits: add a payment method"),
            (403, "A subscription is required to run Jobs"),
        ],
    )
    def test_message_about_plans_is_a_plan_error(self, emu, api, status, message):
        """Whatever the status, a refusal that talks about PRO, credits, payment or a subscription is about the plan."""
        emu.add_fault(route="jobs.create", status=status, message=message)
        _, err = hub_error(lambda: run_job(api))
        assert type(err) is CloudError and err.status == status
        assert "PRO/Team/Enterprise plan or prepaid credits" in err.message and message in err.message

    def test_lowercase_pro_in_a_name_is_not_a_plan(self, emu, api):
        """A namespace called 'pro-audio' in a 403 is a permission problem, not a plan problem."""
        emu.add_fault(
            route="jobs.create", status=403, message="You don't have the rights to use the namespace 'pro-audio'"
        )
        _, err = hub_error(lambda: run_job(api))
        assert "plan" not in err.message and "namespace 'pro-audio'" in err.message


class TestDescribeForbidden:
    def test_foreign_namespace_names_it(self, api):
        """A 403 on someone else's namespace says which namespace and asks for a token scoped to it."""
        _, err = hub_error(lambda: run_job(api, namespace="bob"), namespace="bob")
        assert type(err) is CloudError and err.status == 403
        assert "no permission" in err.message and "namespace 'bob'" in err.message
        assert "fine-grained" in err.hint and "https://huggingface.co/settings/tokens" in err.hint

    def test_namespace_taken_from_the_server_message(self, api):
        """Without ``namespace=``, the namespace the server names is used (create_repo in another namespace)."""
        _, err = hub_error(lambda: api.create_repo("bob/diarist-staging", repo_type="dataset"))
        assert type(err) is CloudError and err.status == 403 and "namespace 'bob'" in err.message

    def test_gated_model_names_its_page(self, emu, api):
        """A GatedRepoError names the model and the page where its conditions are accepted."""
        emu.add_fault(
            route="repos.info", status=403, message=f"Access to model {MODEL} is restricted", code="GatedRepo"
        )
        exc, err = hub_error(lambda: api.model_info(MODEL), action="load the diarization model", repo_id=MODEL)
        assert isinstance(exc, GatedRepoError)
        assert type(err) is CloudError and err.status == 403
        assert err.message.startswith("could not load the diarization model: ") and "gated" in err.message
        assert f"https://huggingface.co/{MODEL}" in err.hint and "accept" in err.hint

    def test_gated_message_without_gated_error_finds_the_model(self, emu, api):
        """A plain 403 whose message says "access to model X" (a job that needs the model) names X's page."""
        emu.add_fault(route="jobs.create", status=403, message=f"Access to model {MODEL} is restricted.")
        _, err = hub_error(lambda: run_job(api))
        assert f"https://huggingface.co/{MODEL}" in err.hint


class TestDescribeNotFound:
    def test_missing_job_no_longer_exists(self, api):
        """A JobNotFoundError says the job is gone and names it."""
        exc, err = hub_error(
            lambda: api.inspect_job(job_id="0123abcd", namespace=NS), action="check job 0123abcd", namespace=NS
        )
        assert isinstance(exc, JobNotFoundError)
        assert type(err) is CloudError and err.status == 404
        assert "job 0123abcd no longer exists on the Hub" in err.message and f"'{NS}'" in err.message

    def test_missing_repo_names_it(self, api):
        """A RepositoryNotFoundError names the repository."""
        _, err = hub_error(lambda: api.repo_info(f"{NS}/nothing", repo_type="dataset"), action="read the inputs")
        assert type(err) is CloudError and err.status == 404
        assert f"{NS}/nothing does not exist" in err.message

    def test_missing_namespace_names_it(self, emu, api):
        """A bare 404 on the jobs route is about the namespace."""
        emu.add_fault(route="jobs.create", status=404, message="Namespace not found")
        _, err = hub_error(lambda: run_job(api, namespace="ghost"), namespace="ghost")
        assert type(err) is CloudError and err.status == 404
        assert "namespace 'ghost' does not exist" in err.message and "organization" in err.hint


class TestDescribeTransient:
    def test_429_carries_retry_after_seconds(self, emu, api):
        """A 429 is transient and carries the Retry-After seconds."""
        emu.add_fault(route="jobs.create", status=429, retry_after=7)
        _, err = hub_error(lambda: run_job(api))
        assert type(err) is CloudTransientError and err.status == 429 and err.retry_after == 7
        assert "rate-limiting" in err.message and "HTTP 429" in err.message

    def test_429_retry_after_as_http_date(self, emu, api):
        """Retry-After may be an HTTP date; it becomes seconds from now."""
        emu.add_fault(
            route="jobs.create", status=429, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True)
        )
        _, err = hub_error(lambda: run_job(api))
        assert isinstance(err, CloudTransientError) and 25 <= err.retry_after <= 31

    def test_429_without_retry_after(self, emu, api):
        """Without Retry-After, retry_after is None and the caller's backoff decides."""
        emu.add_fault(route="jobs.create", status=429)
        _, err = hub_error(lambda: run_job(api))
        assert isinstance(err, CloudTransientError) and err.retry_after is None

    @pytest.mark.parametrize("status", [500, 502, 503])
    def test_5xx_is_transient(self, emu, api, status):
        """A server error is transient and quotes the status and the server's words."""
        emu.add_fault(route="jobs.create", status=status, message="upstream hiccup")
        _, err = hub_error(lambda: run_job(api))
        assert type(err) is CloudTransientError and err.status == status
        assert f"HTTP {status}: upstream hiccup" in err.message and "retrying" in err.message

    def test_connection_reset_is_transient(self, emu, api):
        """A reset connection (httpx2.ReadError) is transient."""
        emu.add_fault(route="jobs.inspect", reset=True)
        exc, err = hub_error(lambda: api.inspect_job(job_id="x", namespace=NS))
        assert isinstance(exc, httpx2.ReadError)
        assert type(err) is CloudTransientError and err.status is None and "unreachable" in err.message

    def test_connection_refused_is_transient(self, closed_port):
        """Nothing listening (httpx2.ConnectError) is transient."""
        api = HfApi(endpoint=f"http://127.0.0.1:{closed_port}", token=TOKEN)
        exc, err = hub_error(api.whoami)
        assert isinstance(exc, httpx2.ConnectError)
        assert type(err) is CloudTransientError and "unreachable" in err.message

    @pytest.mark.parametrize(
        "exc", [httpx2.ReadTimeout("timed out"), httpx2.ConnectTimeout("timed out"), httpx2.RemoteProtocolError("eof")]
    )
    def test_timeouts_and_protocol_errors_are_transient(self, exc):
        """Timeouts and a server that hangs up mid-answer (not provoked by the emulator) are transient."""
        assert type(describe_hub_error(exc, action=ACTION)) is CloudTransientError


class TestDescribeOther:
    @pytest.mark.parametrize("status", [400, 409, 422])
    def test_other_4xx_quote_the_server(self, emu, api, status):
        """Other client errors are permanent and quote the server's message."""
        emu.add_fault(route="jobs.create", status=status, message="flavor 'x9' is unknown")
        _, err = hub_error(lambda: run_job(api))
        assert type(err) is CloudError and err.status == status
        assert f"HTTP {status}: flavor 'x9' is unknown" in err.message

    def test_real_conflict(self, api):
        """Creating a repo twice is a 409 with the Hub's own words."""
        api.create_repo(f"{NS}/staging", repo_type="dataset")
        _, err = hub_error(lambda: api.create_repo(f"{NS}/staging", repo_type="dataset"), action="create the repo")
        assert type(err) is CloudError and err.status == 409 and "already created" in err.message

    def test_token_in_a_server_message_is_redacted(self, emu, api):
        """A token echoed back by the server never reaches the message."""
        emu.add_fault(route="jobs.create", status=400, message="bad header hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345")
        _, err = hub_error(lambda: run_job(api))
        assert "hf_AbCd" not in str(err) and "hf_***" in err.message

    def test_non_http_error_is_described_not_raised(self):
        """An unexpected exception becomes a CloudError naming its type and text."""
        err = describe_hub_error(ValueError("boom"), action=ACTION)
        assert type(err) is CloudError and err.status is None and "ValueError: boom" in err.message

    def test_offline_mode_says_which_variable(self):
        """HF_HUB_OFFLINE makes every call fail; the hint names the variable."""
        err = describe_hub_error(OfflineModeIsEnabled("offline"), action=ACTION)
        assert type(err) is CloudError and "HF_HUB_OFFLINE" in err.hint

    def test_diarist_error_is_returned_unchanged(self):
        """An error already mapped is not mapped again."""
        original = CloudError("already said", status=402)
        assert describe_hub_error(original, action=ACTION) is original


class TestCallHub:
    def test_returns_the_result(self, api):
        """A call that succeeds returns its result without sleeping."""
        sleep = RecordingSleep()
        assert call_hub(api.whoami, action="check the token", sleep=sleep)["name"] == NS
        assert sleep.calls == []

    def test_429_twice_then_success_honours_retry_after(self, emu, api):
        """Two 429s with Retry-After 7 are retried after 7 s each, then the job is created."""
        emu.add_fault(route="jobs.create", status=429, retry_after=7, times=2)
        sleep = RecordingSleep()
        with capture_logs() as logs:
            job = call_hub(lambda: run_job(api), action=ACTION, namespace=NS, sleep=sleep)
        assert job.id in emu.jobs
        assert sleep.calls == [7, 7]
        assert [r["status"] for r in create_requests(emu)] == [429, 429, 200]
        retries = [e for e in logs if e["event"] == "hub_retry"]
        assert [(e["attempt"], e["delay"], e["status"]) for e in retries] == [(1, 7, 429), (2, 7, 429)]

    def test_resets_exhaust_the_attempts(self, emu, api):
        """Five resets in a row raise the mapped CloudTransientError after five calls, chained to the ReadError."""
        emu.add_fault(route="jobs.inspect", reset=True, times=-1)
        sleep = RecordingSleep()
        with pytest.raises(CloudTransientError) as info:
            call_hub(lambda: api.inspect_job(job_id="x", namespace=NS), action="check a job", sleep=sleep)
        assert isinstance(info.value.__cause__, httpx2.ReadError)
        assert [r["status"] for r in emu.requests if r["route"] == "jobs.inspect"] == [0] * 5
        assert sleep.calls == [1, 2, 4, 8]

    def test_401_is_not_retried(self, emu):
        """A permanent answer is raised at once, after one request, chained to the client's error."""
        bad = HfApi(endpoint=emu.url, token="hf_expired")
        sleep = RecordingSleep()
        with pytest.raises(CloudError) as info:
            call_hub(lambda: run_job(bad), action=ACTION, namespace=NS, sleep=sleep)
        assert info.value.status == 401 and "HF_TOKEN" in info.value.hint
        assert isinstance(info.value.__cause__, HfHubHTTPError)
        assert len(create_requests(emu)) == 1 and sleep.calls == []

    def test_backoff_is_capped(self, emu, api):
        """Without Retry-After the wait doubles from base_delay and stops growing at max_delay."""
        emu.add_fault(route="jobs.create", status=503, times=-1)
        sleep = RecordingSleep()
        with pytest.raises(CloudTransientError) as info:
            call_hub(lambda: run_job(api), action=ACTION, attempts=6, base_delay=1, max_delay=5, sleep=sleep)
        assert info.value.status == 503
        assert sleep.calls == [1, 2, 4, 5, 5]
        assert len(create_requests(emu)) == 6

    def test_retry_after_above_backoff_is_honoured_up_to_max_delay(self, emu, api):
        """Retry-After wins over a shorter backoff, but never beyond max_delay."""
        emu.add_fault(route="jobs.create", status=429, retry_after=30)
        emu.add_fault(route="jobs.create", status=429, retry_after=120)
        sleep = RecordingSleep()
        call_hub(lambda: run_job(api), action=ACTION, max_delay=60, sleep=sleep)
        assert sleep.calls == [30, 60]

    def test_backoff_above_retry_after_wins(self, emu, api):
        """A Retry-After shorter than the backoff does not shorten the wait."""
        emu.add_fault(route="jobs.create", status=429, retry_after=1)
        sleep = RecordingSleep()
        call_hub(lambda: run_job(api), action=ACTION, base_delay=10, sleep=sleep)
        assert sleep.calls == [10]

    def test_args_and_kwargs_reach_fn(self, api):
        """Positional and keyword arguments other than call_hub's own are forwarded."""
        api.create_repo(f"{NS}/inputs", repo_type="dataset")
        info = call_hub(api.repo_info, f"{NS}/inputs", action="read the inputs", repo_type="dataset")
        assert info.id == f"{NS}/inputs"

    def test_diarist_error_passes_through(self):
        """A DiaristError raised by fn is neither mapped nor retried."""
        original = CloudError("the ledger says no")
        calls = []

        def fn():
            calls.append(1)
            raise original

        with pytest.raises(CloudError) as info:
            call_hub(fn, action=ACTION, sleep=RecordingSleep())
        assert info.value is original and calls == [1]

    def test_attempts_must_be_positive(self):
        """Zero attempts is a programming error."""
        with pytest.raises(ValueError, match="attempts"):
            call_hub(lambda: None, action=ACTION, attempts=0)
