# Least privilege: each identity gets exactly what its hop needs, on the one resource it needs.

# The bridge publishes completions and watch messages.
resource "google_pubsub_topic_iam_member" "bridge_publishes_completions" {
  project = var.project_id
  topic   = google_pubsub_topic.completions.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.bridge.email}"
}

resource "google_pubsub_topic_iam_member" "bridge_publishes_watches" {
  project = var.project_id
  topic   = google_pubsub_topic.watches.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.bridge.email}"
}

# The bridge reads its API keys.
resource "google_secret_manager_secret_iam_member" "bridge_reads_api_keys" {
  project   = var.project_id
  secret_id = var.api_keys_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.bridge.email}"
}

# The bridge reads the key its page tokens are signed with.
resource "google_secret_manager_secret_iam_member" "bridge_reads_page_token_key" {
  project   = var.project_id
  secret_id = var.page_token_key_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.bridge.email}"
}

# The bridge reads and writes the Firestore store.
resource "google_project_iam_member" "bridge_uses_firestore" {
  count   = local.firestore ? 1 : 0
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.bridge.email}"
}

# Pub/Sub's service agent mints the pusher's OIDC tokens for the push requests.
resource "google_service_account_iam_member" "pubsub_agent_mints_pusher_tokens" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Dead-lettering: the service agent publishes to the dead-letter topic and acknowledges the
# forwarded message on the subscription it came from.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_completions" {
  project      = var.project_id
  subscription = google_pubsub_subscription.completions.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_watches" {
  project      = var.project_id
  subscription = google_pubsub_subscription.watches.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
