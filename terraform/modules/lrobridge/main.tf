# lrobridge on Cloud Run: the service, its topics and push subscriptions, the identities and
# least-privilege grants between them, Firestore when chosen, and the delivery-drain schedule.
# docs/deploy.md draws what talks to what; tests/unit/test_terraform.py checks this module
# against the code (routes, environment variables, audiences, port, retry settings).

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  firestore = var.store == "firestore"
  poller    = var.watch_mode == "poller"

  store_url = local.firestore ? "firestore://${var.firestore_database}" : "sqlite:///lrobridge.db"

  # SQLite is a file inside one instance: a second instance would keep watches, callback runs
  # and quarantine of its own (and see none of the first one's), so with sqlite there is one
  # instance, at most. The file is also lost whenever that instance stops: sqlite is for trying
  # things out; use firestore for anything that must survive a restart.
  max_instances = local.firestore ? var.max_instances : 1
  # The in-process watcher polls between requests: it needs an instance always up with CPU
  # always allocated (instance-based billing). pubsub and tasks modes need neither and scale to
  # zero.
  min_instances = local.poller ? 1 : 0
  cpu_idle      = !local.poller

  # Audiences of the OIDC tokens Pub/Sub and Cloud Scheduler send. They are Cloud Run custom
  # audiences (the service URL cannot be used: the service's own environment would depend on it).
  push_audience = var.push_audience != "" ? var.push_audience : "https://${var.name}.${var.project_id}.lrobridge/pubsub"
  api_audience  = var.api_audience != "" ? var.api_audience : "https://${var.name}.${var.project_id}.lrobridge/api"

  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Every variable here is one lrobridge reads (lrobridge/config.py ENVIRONMENT).
  environment = {
    GOOGLE_CLOUD_PROJECT           = var.project_id
    LROBRIDGE_TOPIC                = var.completion_topic
    LROBRIDGE_SUBSCRIPTION         = var.completion_subscription
    LROBRIDGE_WATCH_MODE           = var.watch_mode
    LROBRIDGE_WATCH_TOPIC          = var.watch_topic
    LROBRIDGE_WATCH_SUBSCRIPTION   = var.watch_subscription
    LROBRIDGE_WATCH_MIN_BACKOFF    = "${var.watch_min_backoff_seconds}s"
    LROBRIDGE_WATCH_MAX_BACKOFF    = "${var.watch_max_backoff_seconds}s"
    LROBRIDGE_WATCH_MAX_DELIVERIES = tostring(var.watch_max_delivery_attempts)
    LROBRIDGE_STORE                = local.store_url
    LROBRIDGE_PAYLOAD_FORMAT       = var.payload_format
    LROBRIDGE_LOG_FORMAT           = "json"
    # Cloud Run IAM verifies every token (the service requires roles/run.invoker) and removes
    # its signature; lrobridge then checks the claims: audience and service account.
    LROBRIDGE_PUSH_AUTH            = "cloudrun"
    LROBRIDGE_PUSH_AUDIENCE        = local.push_audience
    LROBRIDGE_PUSH_SERVICE_ACCOUNT = google_service_account.pusher.email
    LROBRIDGE_API_AUTH             = "key"
    LROBRIDGE_API_SERVICE_ACCOUNTS = google_service_account.scheduler.email
    LROBRIDGE_API_AUDIENCE         = local.api_audience
    # Cloud Tasks (tasks.tf): exact-time polls and webhook retries, tokens of the tasks identity.
    LROBRIDGE_TASKS_LOCATION        = var.region
    LROBRIDGE_TASKS_QUEUE           = local.tasks_queue
    LROBRIDGE_TASKS_SOURCE_QUEUES   = join(",", [for host, queue in local.source_queues : "${host}=${queue}"])
    LROBRIDGE_TASKS_WEBHOOK_QUEUE   = var.webhook_retry_tasks ? local.webhook_queue : ""
    LROBRIDGE_TASKS_URL             = local.service_url
    LROBRIDGE_TASKS_SERVICE_ACCOUNT = google_service_account.tasks.email
    LROBRIDGE_TASKS_AUDIENCE        = local.tasks_audience
  }
}

# -- identities ------------------------------------------------------------------------------

resource "google_service_account" "bridge" {
  project      = var.project_id
  account_id   = "${var.name}-run"
  display_name = "lrobridge service (${var.name})"
  description  = "Runs the Cloud Run service: publishes completions and watch messages, uses the store."
}

resource "google_service_account" "pusher" {
  project      = var.project_id
  account_id   = "${var.name}-push"
  display_name = "lrobridge Pub/Sub pusher (${var.name})"
  description  = "Identity of the push subscriptions' OIDC tokens: may invoke the service, nothing else."
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name}-cron"
  display_name = "lrobridge scheduler (${var.name})"
  description  = "Identity of Cloud Scheduler's OIDC tokens for POST /v1/deliveries:drain."
}
