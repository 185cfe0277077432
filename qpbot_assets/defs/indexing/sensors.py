import dagster as dg

# Declarative automation refreshes the snapshot and the pointer after any run that changed
# the index (for example a backfill launched from the UI); it must be running for that.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
