# Cloud Tasks: exact-time polls (watch_mode = "tasks") and webhook retries at their planned time.
#
# Rate limits per source: each watched source host listed in var.tasks_source_queues gets a queue
# of its own, whose max_dispatches_per_second and max_concurrent_dispatches bound the polls that
# host receives (LROBRIDGE_TASKS_SOURCE_QUEUES routes its watches there); every other source
# shares the default watch queue and its limits. A burst of registrations or of due polls then
# waits in the queue (tasks dispatch late, never faster) instead of hitting the watched server.
# The queues' concurrency also bounds what reaches the service: keep the sum of
# max_concurrent_dispatches under max_instances * concurrency.
#
# Cloud Tasks has no dead-letter queue. After a task's last attempt (max_attempts) it is gone; the
# watch stays ACTIVE in the store with its nextPollTime in the past, and the scheduled drain
# (scheduler.tf, every minute) sweeps watches overdue by LROBRIDGE_TASKS_SWEEP_AFTER: it records
# lastError on the watch and schedules it again. A webhook retry whose task is lost is made by the
# same drain (the delivery's record is the truth).

locals {
  tasks_watch    = var.watch_mode == "tasks"
  tasks_queue    = "${var.name}-watch"
  webhook_queue  = "${var.name}-webhook-retry"
  tasks_audience = var.tasks_audience != "" ? var.tasks_audience : "https://${var.name}.${var.project_id}.lrobridge/tasks"
  # The service's deterministic URL, known before the service exists (so its own environment can
  # name it): https://SERVICE-PROJECT_NUMBER.REGION.run.app.
  service_url = "https://${var.name}-${data.google_project.this.number}.${var.region}.run.app"
  # Queue id of each source host's queue: letters, digits and hyphens.
  source_queues = {
    for host, limits in var.tasks_source_queues :
    host => "${var.name}-src-${substr(replace(lower(host), "/[^a-z0-9]+/", "-"), 0, 60)}"
  }
}

resource "google_service_account" "tasks" {
  project      = var.project_id
  account_id   = "${var.name}-tasks"
  display_name = "lrobridge Cloud Tasks invoker (${var.name})"
  description  = "Identity of the OIDC tokens tasks carry to /tasks/*: may invoke the service, nothing else."
}

resource "google_cloud_tasks_queue" "watches" {
  count    = local.tasks_watch ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = local.tasks_queue

  rate_limits {
    max_dispatches_per_second = var.tasks_max_dispatches_per_second
    max_concurrent_dispatches = var.tasks_max_concurrent_dispatches
  }

  # A failed poll task (the store, Pub/Sub or the service failing) is retried soon; its watch's
  # own backoff is the next task, not this.
  retry_config {
    max_attempts  = var.tasks_max_attempts
    min_backoff   = "1s"
    max_backoff   = "300s"
    max_doublings = 8
  }
}

resource "google_cloud_tasks_queue" "sources" {
  for_each = local.tasks_watch ? var.tasks_source_queues : {}
  project  = var.project_id
  location = var.region
  name     = local.source_queues[each.key]

  rate_limits {
    max_dispatches_per_second = each.value.max_dispatches_per_second
    max_concurrent_dispatches = each.value.max_concurrent_dispatches
  }

  retry_config {
    max_attempts  = var.tasks_max_attempts
    min_backoff   = "1s"
    max_backoff   = "300s"
    max_doublings = 8
  }
}

resource "google_cloud_tasks_queue" "webhook_retries" {
  count    = var.webhook_retry_tasks ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = local.webhook_queue

  rate_limits {
    max_dispatches_per_second = var.tasks_max_dispatches_per_second
    max_concurrent_dispatches = var.tasks_max_concurrent_dispatches
  }

  # A task answered 503 (it arrived before its delivery was due by the service's clock) is tried
  # again within a second or two.
  retry_config {
    max_attempts  = var.tasks_max_attempts
    min_backoff   = "1s"
    max_backoff   = "60s"
    max_doublings = 4
  }
}

# The bridge creates (and, for deleted watches, deletes) tasks on its queues...
resource "google_cloud_tasks_queue_iam_member" "bridge_enqueues_watches" {
  count    = local.tasks_watch ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.watches[0].name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.bridge.email}"
}

resource "google_cloud_tasks_queue_iam_member" "bridge_deletes_watch_tasks" {
  count    = local.tasks_watch ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.watches[0].name
  role     = "roles/cloudtasks.taskDeleter"
  member   = "serviceAccount:${google_service_account.bridge.email}"
}

resource "google_cloud_tasks_queue_iam_member" "bridge_enqueues_source_watches" {
  for_each = google_cloud_tasks_queue.sources
  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.bridge.email}"
}

resource "google_cloud_tasks_queue_iam_member" "bridge_deletes_source_watch_tasks" {
  for_each = google_cloud_tasks_queue.sources
  project  = var.project_id
  location = var.region
  name     = each.value.name
  role     = "roles/cloudtasks.taskDeleter"
  member   = "serviceAccount:${google_service_account.bridge.email}"
}

resource "google_cloud_tasks_queue_iam_member" "bridge_enqueues_webhook_retries" {
  count    = var.webhook_retry_tasks ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.webhook_retries[0].name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.bridge.email}"
}

# ...naming the invoker identity in each task's oidc_token, which needs actAs on it...
resource "google_service_account_iam_member" "bridge_acts_as_tasks_invoker" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.bridge.email}"
}

# ...and that identity may invoke the service (the handler checks its email and audience).
resource "google_cloud_run_v2_service_iam_member" "tasks_invoke" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.bridge.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.tasks.email}"
}
