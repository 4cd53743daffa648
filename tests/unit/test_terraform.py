"""terraform/ checked against the code: the push endpoints are the Flask routes, every variable
set on the service is one the app reads and the defaults make a valid configuration, the OIDC
audiences and identities are the ones the app checks, the port and concurrency are the image's,
the retry policy is the one the app plans with, grants are least-privilege, and every reference
resolves (what `terraform validate` would check; providers cannot be downloaded here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import hcl2
import pytest

from lrobridge import Bridge
from lrobridge.config import ENVIRONMENT, Settings
from lrobridge.storage.firestore.client import DEFAULT_PREFIX
from lrobridge.storage.firestore.store import COMPOSITE_INDEXES as STORE_INDEXES
from lrobridge.storage.firestore.webhooks import COMPOSITE_INDEXES as WEBHOOK_INDEXES
from lrobridge.storage.sqlite.store import SqliteStore
from tests.support.container import command_argv, parse_dockerfile
from tests.support.terraform import EXAMPLE, MODULE, OPTIONS, ROOT, Config, load, one

# Set by terraform, read by code that other branches add (webhooks: the drain endpoint's
# OIDC callers). Once ENVIRONMENT has them they are checked like the rest.
SERVICE_URI = "${google_cloud_run_v2_service.bridge.uri}"

TF = load(MODULE)
SERVICE = TF.resource("google_cloud_run_v2_service", "bridge")
TEMPLATE = one(SERVICE["template"])
CONTAINER = one(TEMPLATE["containers"])
ENV: dict[str, Any] = TF.locals["environment"]


@pytest.fixture(scope="module")
def routes() -> Iterator[set[tuple[str, str]]]:
    settings = Settings(push_auth="none", project="p")
    bridge = Bridge(settings, store=SqliteStore(":memory:"))
    app = bridge.create_app()
    yield {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method in {"GET", "POST", "DELETE"}
    }
    bridge.close()


def service_env_names() -> set[str]:
    explicit = {block["name"] for block in CONTAINER["env"]}
    (dynamic,) = CONTAINER["dynamic"]
    assert dynamic["env"]["for_each"] == "${local.environment}"
    return explicit | set(ENV)


def test_the_terraform_files_are_formatted() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(ROOT / "terraform")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("subscription", "path"), [("completions", "/pubsub/push"), ("watches", "/pubsub/watch")]
)
def test_each_push_subscription_targets_the_flask_route_that_handles_it(
    routes: set[tuple[str, str]], subscription: str, path: str
) -> None:
    push = one(TF.resource("google_pubsub_subscription", subscription)["push_config"])
    assert push["push_endpoint"] == SERVICE_URI + path
    assert ("POST", path) in routes


def test_the_scheduler_posts_to_the_drain_route(routes: set[tuple[str, str]]) -> None:
    job = TF.resource("google_cloud_scheduler_job", "drain")
    target = one(job["http_target"])
    assert target["http_method"] == "POST"
    path = target["uri"].removeprefix(SERVICE_URI)
    assert ("POST", path) in routes


def test_the_startup_and_liveness_probes_use_the_health_route(
    routes: set[tuple[str, str]],
) -> None:
    for probe in ("startup_probe", "liveness_probe"):
        path = one(one(CONTAINER[probe])["http_get"])["path"]
        assert ("GET", path) in routes


def test_every_variable_set_on_the_service_is_one_the_app_reads() -> None:
    names = service_env_names()
    assert names <= set(ENVIRONMENT), names - set(ENVIRONMENT)
    assert "PORT" not in names  # Cloud Run sets it; it is reserved


def _example_values() -> dict[str, Any]:
    with (EXAMPLE / "terraform.tfvars.example").open() as handle:
        return hcl2.load(handle, serialization_options=OPTIONS)  # type: ignore[no-any-return]


def _resolve(value: object) -> str | None:
    """A value with the example's tfvars and the module's defaults for variables, or None when
    it depends on a resource."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    example = _example_values()

    def default(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(example[name] if name in example else TF.variables[name]["default"])

    text = re.sub(r"\$\{(?:tostring\()?var\.(\w+)\)?\}", default, text)
    return None if "${" in text else text


def test_the_defaults_make_a_configuration_the_app_accepts_with_the_same_retry_plan() -> None:
    env = {name: v for name, value in ENV.items() if (v := _resolve(value)) is not None}
    env["LROBRIDGE_PUSH_SERVICE_ACCOUNT"] = "pusher@p.iam.gserviceaccount.com"
    env["K_SERVICE"] = "lrobridge"  # Cloud Run sets it on every instance
    env["LROBRIDGE_PUSH_AUDIENCE"] = "https://lrobridge.p.lrobridge/pubsub"  # local.push_audience
    settings = Settings.from_env(env)
    settings.check_push_auth()
    assert settings.project and settings.topic_path.endswith("/lro-completed")
    assert settings.watch_mode == "pubsub" and settings.push_auth == "cloudrun"
    assert settings.log_format == "json"
    watches = TF.resource("google_pubsub_subscription", "watches")
    retry = one(watches["retry_policy"])
    assert _resolve(retry["minimum_backoff"]) == f"{settings.watch_min_backoff:g}s"
    assert _resolve(retry["maximum_backoff"]) == f"{settings.watch_max_backoff:g}s"
    dead_letter = one(watches["dead_letter_policy"])
    assert _resolve(dead_letter["max_delivery_attempts"]) == str(settings.watch_max_deliveries)
    assert watches["enable_message_ordering"] is False
    assert _resolve(watches["name"]) == settings.watch_subscription
    assert _resolve(TF.resource("google_pubsub_topic", "watches")["name"]) == settings.watch_topic
    # The app's own defaults are the module's, so `lrobridge pubsub init` makes the same policy.
    defaults = Settings()
    assert (defaults.watch_min_backoff, defaults.watch_max_backoff) == (
        settings.watch_min_backoff,
        settings.watch_max_backoff,
    )
    assert defaults.watch_max_deliveries == settings.watch_max_deliveries


def test_both_store_choices_give_a_store_url_and_sqlite_pins_one_instance() -> None:
    store_url = TF.locals["store_url"]
    assert "firestore://${var.firestore_database}" in store_url
    (sqlite_url,) = re.findall(r"sqlite:///[\w./-]+", store_url)
    resolved = Settings.from_env({"LROBRIDGE_STORE": sqlite_url}).store_url
    assert resolved == "sqlite:///" + os.path.abspath(sqlite_url.removeprefix("sqlite:///"))
    assert ENV["LROBRIDGE_STORE"] == "${local.store_url}"
    assert TF.locals["max_instances"] == "${local.firestore ? var.max_instances : 1}"
    scaling = one(TEMPLATE["scaling"])
    assert scaling["max_instance_count"] == "${local.max_instances}"
    database = TF.resource("google_firestore_database", "store")
    assert database["count"] == "${local.firestore ? 1 : 0}"
    assert database["name"] == "${var.firestore_database}"
    default_url = f"firestore://{TF.variables['firestore_database']['default']}"
    assert Settings.from_env({"LROBRIDGE_STORE": default_url}).store_url == default_url


def test_the_firestore_indexes_are_the_composite_indexes_the_store_queries_need() -> None:
    declared = {
        (index["collection"], tuple((f["path"], f["order"]) for f in index["fields"]))
        for index in TF.locals["firestore_indexes"].values()
    }
    needed = {
        (DEFAULT_PREFIX + collection, fields)
        for collection, fields in (*STORE_INDEXES, *WEBHOOK_INDEXES)
    }
    assert declared == needed
    index = TF.resource("google_firestore_index", "store")
    assert index["for_each"] == (
        "${{for name, index in local.firestore_indexes : name => index if local.firestore}}"
    )
    assert index["database"] == "${google_firestore_database.store[0].name}"
    fields = one(index["dynamic"])["fields"]
    assert one(fields["content"]) == {
        "field_path": "${fields.value.path}",
        "order": "${fields.value.order}",
    }
    assert "${google_firestore_index.store}" in SERVICE["depends_on"]


def test_poller_mode_keeps_one_instance_up_with_cpu_between_requests() -> None:
    assert TF.locals["min_instances"] == "${local.poller ? 1 : 0}"
    assert TF.locals["cpu_idle"] == "${!local.poller}"
    assert one(TEMPLATE["scaling"])["min_instance_count"] == "${local.min_instances}"
    assert one(CONTAINER["resources"])["cpu_idle"] == "${local.cpu_idle}"


def test_the_oidc_audiences_and_identities_are_the_ones_the_app_checks() -> None:
    for name in ("completions", "watches"):
        push = one(TF.resource("google_pubsub_subscription", name)["push_config"])
        token = one(push["oidc_token"])
        assert token["audience"] == ENV["LROBRIDGE_PUSH_AUDIENCE"] == "${local.push_audience}"
        assert token["service_account_email"] == ENV["LROBRIDGE_PUSH_SERVICE_ACCOUNT"]
    job = one(TF.resource("google_cloud_scheduler_job", "drain")["http_target"])
    token = one(job["oidc_token"])
    assert token["audience"] == ENV["LROBRIDGE_API_AUDIENCE"] == "${local.api_audience}"
    assert token["service_account_email"] == ENV["LROBRIDGE_API_SERVICE_ACCOUNTS"]
    # Cloud Run IAM accepts these audiences only when they are the service's custom audiences.
    assert SERVICE["custom_audiences"] == [
        "${local.push_audience}",
        "${local.api_audience}",
        "${local.tasks_audience}",
    ]


def test_the_service_requires_iam_which_is_what_makes_cloudrun_push_auth_sound() -> None:
    assert ENV["LROBRIDGE_PUSH_AUTH"] == "cloudrun"
    assert "allUsers" not in TF.text and "allAuthenticatedUsers" not in TF.text
    assert "invoker_iam_disabled" not in SERVICE


def test_the_image_port_and_request_concurrency_are_the_dockerfiles() -> None:
    image = parse_dockerfile()
    assert str(one(CONTAINER["ports"])["container_port"]) == image.env["PORT"]
    argv = command_argv(image.command)
    threads = int(argv[argv.index("--threads") + 1])  # one process per instance
    assert TEMPLATE["max_instance_request_concurrency"] == "${var.concurrency}"
    assert TF.variables["concurrency"]["default"] == threads


def _grants(config: Config) -> set[tuple[str, str, str, str]]:
    """(resource kind, what it is on, role, member) of every IAM member resource."""
    found = set()
    for kind, named in config.resources.items():
        if not kind.endswith("_iam_member"):
            continue
        for body in named.values():
            target = (
                next(
                    body[key]
                    for key in ("topic", "subscription", "name", "secret_id", "service_account_id")
                    if key in body
                )
                if kind != "google_project_iam_member"
                else "project"
            )
            found.add((kind, target, body["role"], body["member"]))
    return found


def test_each_identity_gets_only_the_grants_its_hop_needs() -> None:
    bridge = "serviceAccount:${google_service_account.bridge.email}"
    pusher = "serviceAccount:${google_service_account.pusher.email}"
    scheduler = "serviceAccount:${google_service_account.scheduler.email}"
    tasks = "serviceAccount:${google_service_account.tasks.email}"
    agent = "${local.pubsub_agent}"
    service = "${google_cloud_run_v2_service.bridge.name}"
    assert _grants(TF) == {
        ("google_pubsub_topic_iam_member", "${google_pubsub_topic.completions.name}",
         "roles/pubsub.publisher", bridge),
        ("google_pubsub_topic_iam_member", "${google_pubsub_topic.watches.name}",
         "roles/pubsub.publisher", bridge),
        ("google_secret_manager_secret_iam_member", "${var.api_keys_secret}",
         "roles/secretmanager.secretAccessor", bridge),
        ("google_secret_manager_secret_iam_member", "${var.page_token_key_secret}",
         "roles/secretmanager.secretAccessor", bridge),
        ("google_project_iam_member", "project", "roles/datastore.user", bridge),
        ("google_cloud_run_v2_service_iam_member", service, "roles/run.invoker", pusher),
        ("google_cloud_run_v2_service_iam_member", service, "roles/run.invoker", scheduler),
        ("google_cloud_run_v2_service_iam_member", service, "roles/run.invoker",
         "${each.value}"),
        ("google_service_account_iam_member", "${google_service_account.pusher.name}",
         "roles/iam.serviceAccountTokenCreator", agent),
        ("google_pubsub_topic_iam_member", "${google_pubsub_topic.dead_letter.name}",
         "roles/pubsub.publisher", agent),
        ("google_pubsub_subscription_iam_member", "${google_pubsub_subscription.completions.name}",
         "roles/pubsub.subscriber", agent),
        ("google_pubsub_subscription_iam_member", "${google_pubsub_subscription.watches.name}",
         "roles/pubsub.subscriber", agent),
        # Cloud Tasks: the bridge enqueues (and deletes watch tasks) on its own queues only,
        # names the tasks identity in each task (actAs), and that identity may only invoke.
        ("google_cloud_tasks_queue_iam_member", "${google_cloud_tasks_queue.watches[0].name}",
         "roles/cloudtasks.enqueuer", bridge),
        ("google_cloud_tasks_queue_iam_member", "${google_cloud_tasks_queue.watches[0].name}",
         "roles/cloudtasks.taskDeleter", bridge),
        ("google_cloud_tasks_queue_iam_member", "${each.value.name}",
         "roles/cloudtasks.enqueuer", bridge),
        ("google_cloud_tasks_queue_iam_member", "${each.value.name}",
         "roles/cloudtasks.taskDeleter", bridge),
        ("google_cloud_tasks_queue_iam_member",
         "${google_cloud_tasks_queue.webhook_retries[0].name}",
         "roles/cloudtasks.enqueuer", bridge),
        ("google_service_account_iam_member", "${google_service_account.tasks.name}",
         "roles/iam.serviceAccountUser", bridge),
        ("google_cloud_run_v2_service_iam_member", service, "roles/run.invoker", tasks),
    }  # fmt: skip
    assert TF.resource("google_project_iam_member", "bridge_uses_firestore")["count"] == (
        "${local.firestore ? 1 : 0}"
    )
    assert TF.locals["pubsub_agent"].endswith("@gcp-sa-pubsub.iam.gserviceaccount.com")
    assert TEMPLATE["service_account"] == "${google_service_account.bridge.email}"


def test_the_task_queues_are_the_ones_the_app_enqueues_on_with_rate_limits_and_retries(
    routes: set[tuple[str, str]],
) -> None:
    from lrobridge.watching.tasks_mode import WATCH_ROUTE
    from lrobridge.webhooks.retry_tasks import WEBHOOK_ROUTE

    assert {("POST", WATCH_ROUTE), ("POST", WEBHOOK_ROUTE)} <= routes
    queues = TF.resources["google_cloud_tasks_queue"]
    watches, sources, retries = queues["watches"], queues["sources"], queues["webhook_retries"]
    assert watches["name"] == ENV["LROBRIDGE_TASKS_QUEUE"] == "${local.tasks_queue}"
    assert watches["count"] == "${local.tasks_watch ? 1 : 0}"
    assert TF.locals["tasks_watch"] == '${var.watch_mode == "tasks"}'
    assert retries["name"] == "${local.webhook_queue}"
    assert ENV["LROBRIDGE_TASKS_WEBHOOK_QUEUE"] == (
        '${var.webhook_retry_tasks ? local.webhook_queue : ""}'
    )
    name = TF.variables["name"]["default"]
    for local_name in ("tasks_queue", "webhook_queue"):
        queue_id = TF.locals[local_name].replace("${var.name}", name)
        assert Settings.from_env({"LROBRIDGE_TASKS_QUEUE": queue_id}).tasks_queue == queue_id
    # One queue per listed source host, and the app routes that host's watches to it.
    assert sources["for_each"] == "${local.tasks_watch ? var.tasks_source_queues : {}}"
    assert sources["name"] == "${local.source_queues[each.key]}"
    assert "for host, queue in local.source_queues" in ENV["LROBRIDGE_TASKS_SOURCE_QUEUES"]
    example = f"ops.example.com={name}-src-ops-example-com"
    parsed = Settings.from_env({"LROBRIDGE_TASKS_SOURCE_QUEUES": example})
    assert parsed.tasks_source_queues == (("ops.example.com", f"{name}-src-ops-example-com"),)
    for queue in (watches, sources, retries):
        limits = one(queue["rate_limits"])
        assert {"max_dispatches_per_second", "max_concurrent_dispatches"} <= set(limits)
        retry = one(queue["retry_config"])
        assert retry["max_attempts"] == "${var.tasks_max_attempts}" and retry["min_backoff"]
        assert queue["location"] == "${var.region}" == ENV["LROBRIDGE_TASKS_LOCATION"]
    assert TF.variables["tasks_max_dispatches_per_second"]["default"] <= 500
    # The example turns the API on before the module makes queues.
    apis = load(EXAMPLE).resource("google_project_service", "apis")["for_each"]
    assert "cloudtasks.googleapis.com" in str(apis)


def test_tasks_call_the_service_with_a_token_the_handler_checks() -> None:
    # The deterministic run.app URL, known before the service exists.
    assert ENV["LROBRIDGE_TASKS_URL"] == "${local.service_url}"
    assert TF.locals["service_url"] == (
        "https://${var.name}-${data.google_project.this.number}.${var.region}.run.app"
    )
    assert ENV["LROBRIDGE_TASKS_SERVICE_ACCOUNT"] == "${google_service_account.tasks.email}"
    assert ENV["LROBRIDGE_TASKS_AUDIENCE"] == "${local.tasks_audience}"
    env = {name: v for name, value in ENV.items() if (v := _resolve(value)) is not None}
    env.update(
        {
            "LROBRIDGE_TASKS_URL": "https://lrobridge-123.europe-west1.run.app",
            "LROBRIDGE_TASKS_SERVICE_ACCOUNT": "lrobridge-tasks@p.iam.gserviceaccount.com",
            "LROBRIDGE_TASKS_AUDIENCE": "https://lrobridge.p.lrobridge/tasks",
            "LROBRIDGE_TASKS_LOCATION": "europe-west1",
        }
    )
    settings = Settings.from_env(env)
    settings.check_tasks()
    # The routes verify the configured audience, not the URL the task was sent to.
    assert settings.tasks_token_audience == "https://lrobridge.p.lrobridge/tasks"


def test_dead_letters_are_kept_and_no_subscription_expires() -> None:
    dead_letter_id = "${google_pubsub_topic.dead_letter.id}"
    holder = TF.resource("google_pubsub_subscription", "dead_letter")
    assert holder["topic"] == dead_letter_id and "push_config" not in holder
    for name, body in TF.resources["google_pubsub_subscription"].items():
        assert one(body["expiration_policy"])["ttl"] == "", name
        if "push_config" in body:
            assert one(body["dead_letter_policy"])["dead_letter_topic"] == dead_letter_id


@pytest.mark.parametrize("folder", [MODULE, EXAMPLE], ids=["module", "example"])
def test_every_reference_resolves_and_every_variable_is_used(folder: object) -> None:
    config = load(folder)  # type: ignore[arg-type]
    references = config.references()
    for kind, name in references:
        if kind == "var":
            assert name in config.variables, f"var.{name} is not declared"
        elif kind == "local":
            assert name in config.locals, f"local.{name} is not defined"
        elif kind == "module":
            assert name in config.modules, f"module.{name} is not defined"
        elif kind.startswith("data."):
            assert name in config.data[kind.removeprefix("data.")], f"{kind}.{name}"
        else:
            assert name in config.resources.get(kind, {}), f"{kind}.{name} is not defined"
    used = {name for kind, name in references if kind == "var"}
    assert set(config.variables) <= used, set(config.variables) - used


def test_the_example_passes_every_required_module_variable_and_only_known_ones() -> None:
    example = load(EXAMPLE)
    module = example.modules["lrobridge"]
    assert module["source"] == "../../modules/lrobridge"
    passed = set(module) - {"source", "depends_on"}
    required = {name for name, body in TF.variables.items() if "default" not in body}
    assert required <= passed <= set(TF.variables)
    for output in example.outputs.values():
        for name in re.findall(r"module\.lrobridge\.(\w+)", str(output["value"])):
            assert name in TF.outputs
