# Example root: lrobridge on Cloud Run in one project, serverless watching, Firestore store.
#
#   cp terraform.tfvars.example terraform.tfvars   # then edit it
#   terraform init && terraform apply
#
# README.md ("Deploy on Cloud Run") walks through building the image, this apply, and
# registering a watch and a webhook.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# Where `docker push` puts the image.
resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = "lrobridge"
  format        = "DOCKER"
  depends_on    = [google_project_service.apis]
}

# The API keys live in Secret Manager, never in the state: add a version with
#   printf '%s' "$KEY" | gcloud secrets versions add lrobridge-api-keys --data-file=-
resource "google_secret_manager_secret" "api_keys" {
  project   = var.project_id
  secret_id = "lrobridge-api-keys"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

# The key page tokens are signed with, shared by every instance; add a version with
#   python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' |
#     gcloud secrets versions add lrobridge-page-token-key --data-file=-
resource "google_secret_manager_secret" "page_token_key" {
  project   = var.project_id
  secret_id = "lrobridge-page-token-key"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

module "lrobridge" {
  source = "../../modules/lrobridge"

  project_id            = var.project_id
  region                = var.region
  image                 = var.image
  watch_mode            = var.watch_mode
  tasks_source_queues   = var.tasks_source_queues
  store                 = var.store
  api_keys_secret       = google_secret_manager_secret.api_keys.secret_id
  page_token_key_secret = google_secret_manager_secret.page_token_key.secret_id
  api_invokers          = var.api_invokers
  deletion_protection   = var.deletion_protection

  depends_on = [google_project_service.apis]
}
