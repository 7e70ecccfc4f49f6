"""A DSQL-compatible model: uuid primary key, no integer identity."""

import uuid

from django.db import models


class Product(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=50)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    data = models.JSONField(null=True)
    created = models.DateTimeField(auto_now_add=True)
