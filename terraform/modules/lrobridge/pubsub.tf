resource "google_pubsub_topic" "completions" {
  project = var.project_id
  name    = var.completion_topic
  labels  = var.labels
}

resource "google_pubsub_topic" "watches" {
  project = var.project_id
  name    = var.watch_topic
  labels  = var.labels
}

resource "google_pubsub_topic" "dead_letter" {
  project = var.project_id
  name    = var.dead_letter_topic
  labels  = var.labels
}

# A topic keeps nothing by itself: this subscription holds dead letters for inspection.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = "${var.dead_letter_topic}-hold"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  labels                     = var.labels

  expiration_policy {
    ttl = ""
  }
}

# Completed operations -> POST /pubsub/push (callbacks, webhook deliveries).
resource "google_pubsub_subscription" "completions" {
  project                    = var.project_id
  name                       = var.completion_subscription
  topic                      = google_pubsub_topic.completions.id
  ack_deadline_seconds       = 60
  enable_message_ordering    = true
  message_retention_duration = "604800s"
  labels                     = var.labels

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.bridge.uri}/pubsub/push"
    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = local.push_audience
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.completion_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_v2_service_iam_member.pusher_invokes]
}

# Watch messages -> POST /pubsub/watch. The retry policy is the polling schedule: a pending
# operation's delivery is nacked and comes back after this backoff. lrobridge republishes a
# watch before max_delivery_attempts, so only malformed or stuck messages reach the dead letters.
resource "google_pubsub_subscription" "watches" {
  project                    = var.project_id
  name                       = var.watch_subscription
  topic                      = google_pubsub_topic.watches.id
  ack_deadline_seconds       = 60
  enable_message_ordering    = false
  message_retention_duration = "604800s"
  labels                     = var.labels

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.bridge.uri}/pubsub/watch"
    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = local.push_audience
    }
  }

  retry_policy {
    minimum_backoff = "${var.watch_min_backoff_seconds}s"
    maximum_backoff = "${var.watch_max_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.watch_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_v2_service_iam_member.pusher_invokes]
}
