# The distributed store (store = "firestore"): LROBRIDGE_STORE=firestore://DATABASE.
resource "google_firestore_database" "store" {
  count                   = local.firestore ? 1 : 0
  project                 = var.project_id
  name                    = var.firestore_database
  location_id             = var.firestore_location != "" ? var.firestore_location : var.region
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy         = var.deletion_protection ? "ABANDON" : "DELETE"
}

# The composite indexes the store's queries need: COMPOSITE_INDEXES in
# lrobridge/storage/firestore/store.py and lrobridge/storage/firestore/webhooks.py (every other query is
# served by Firestore's automatic single-field indexes). tests/unit/test_terraform.py holds this
# list equal to the code's.
locals {
  firestore_indexes = {
    watches_due = {
      collection = "lrobridge_watches"
      fields     = [{ path = "state", order = "ASCENDING" }, { path = "next_poll", order = "ASCENDING" }]
    }
    watches_by_state = {
      collection = "lrobridge_watches"
      fields     = [{ path = "state", order = "ASCENDING" }, { path = "seq", order = "ASCENDING" }]
    }
    operations_by_parent = {
      collection = "lrobridge_operations"
      fields     = [{ path = "parent", order = "ASCENDING" }, { path = "name", order = "ASCENDING" }]
    }
    callback_runs_old = {
      collection = "lrobridge_callback_runs"
      fields     = [{ path = "state", order = "ASCENDING" }, { path = "update_time", order = "ASCENDING" }]
    }
    deliveries_due = {
      collection = "lrobridge_webhook_deliveries"
      fields     = [{ path = "state", order = "ASCENDING" }, { path = "next_attempt", order = "ASCENDING" }]
    }
    deliveries_by_webhook = {
      collection = "lrobridge_webhook_deliveries"
      fields     = [{ path = "webhook_id", order = "ASCENDING" }, { path = "seq", order = "DESCENDING" }]
    }
    deliveries_by_state = {
      collection = "lrobridge_webhook_deliveries"
      fields     = [{ path = "state", order = "ASCENDING" }, { path = "seq", order = "DESCENDING" }]
    }
    deliveries_by_webhook_and_state = {
      collection = "lrobridge_webhook_deliveries"
      fields = [
        { path = "webhook_id", order = "ASCENDING" },
        { path = "state", order = "ASCENDING" },
        { path = "seq", order = "DESCENDING" },
      ]
    }
  }
}

resource "google_firestore_index" "store" {
  for_each   = { for name, index in local.firestore_indexes : name => index if local.firestore }
  project    = var.project_id
  database   = google_firestore_database.store[0].name
  collection = each.value.collection

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.path
      order      = fields.value.order
    }
  }
}
