variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of Cloud Run, Artifact Registry, Cloud Scheduler and Firestore."
  type        = string
  default     = "us-central1"
}

variable "image" {
  description = "REGION-docker.pkg.dev/PROJECT/lrobridge/lrobridge:TAG, pushed before apply."
  type        = string
}

variable "watch_mode" {
  description = "pubsub or tasks (both scale to zero; tasks polls at exact times on Cloud Tasks) or poller (one instance always up, instance-based billing)."
  type        = string
  default     = "pubsub"
}

variable "store" {
  description = "firestore or sqlite (one instance, state lost on restart: for trying out)."
  type        = string
  default     = "firestore"
}

variable "api_invokers" {
  description = "Who may call the /v1 API through Cloud Run IAM, e.g. [\"user:you@example.com\"]."
  type        = list(string)
  default     = []
}

variable "deletion_protection" {
  description = "Refuse to destroy the service and the Firestore database."
  type        = bool
  default     = true
}

variable "tasks_source_queues" {
  description = "tasks mode: source hosts that get a Cloud Tasks queue (rate limit) of their own."
  type = map(object({
    max_dispatches_per_second = number
    max_concurrent_dispatches = number
  }))
  default = {}
}
