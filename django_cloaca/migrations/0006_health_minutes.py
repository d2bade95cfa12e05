"""Health counts a row per (minute, process, group of triggers), as Alembic revision 0008.

The counts of ``cloaca_health`` are copied into ``cloaca_health_minutes``,
then ``cloaca_health`` is dropped. Going back builds ``cloaca_health`` again,
empty (the counts are dropped, as going back from 0005 does).
"""

from typing import Any

import django_cloaca.models
from django.db import migrations, models

from cloaca_celery.store import health_rows_from_per_trigger

BATCH = 500


def copy_counts(apps: Any, schema_editor: Any) -> None:
    old = apps.get_model("django_cloaca", "TriggerHealth")
    new = apps.get_model("django_cloaca", "HealthMinute")
    using = schema_editor.connection.alias
    found = old.objects.using(using).order_by("minute", "process").values().iterator(chunk_size=BATCH)
    batch = []
    for row in health_rows_from_per_trigger(found):
        batch.append(new(**row))
        if len(batch) >= BATCH:
            new.objects.using(using).bulk_create(batch)
            batch = []
    if batch:
        new.objects.using(using).bulk_create(batch)


class Migration(migrations.Migration):

    dependencies = [
        ('django_cloaca', '0005_health'),
    ]

    operations = [
        migrations.CreateModel(
            name='HealthMinute',
            fields=[
                ('group_key', models.CharField(max_length=140, primary_key=True, serialize=False)),
                ('minute', models.DateTimeField()),
                ('process', models.CharField(max_length=100)),
                ('shard', models.IntegerField()),
                ('counts', models.JSONField(default=django_cloaca.models._no_counts)),
                ('last_poll_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'verbose_name': 'health counts of a minute',
                'verbose_name_plural': 'health counts of minutes',
                'db_table': 'cloaca_health_minutes',
                'indexes': [models.Index(fields=['shard', 'minute'], name='ix_cloaca_health_min_shard'), models.Index(fields=['minute'], name='ix_cloaca_health_min_minute')],
            },
        ),
        migrations.RunPython(copy_counts, migrations.RunPython.noop),
        migrations.DeleteModel(
            name='TriggerHealth',
        ),
    ]
