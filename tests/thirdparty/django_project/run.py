"""Runs one Django step in this process and prints one JSON line: ok, or the error's SQLSTATE."""

import json
import os
import sys
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of the first error in ``exc``'s chain (cause or context) that has one."""
    while exc is not None:
        code = getattr(exc, "sqlstate", None)
        if code:
            return str(code)
        exc = exc.__cause__ or exc.__context__
    return None


def orm() -> dict[str, object]:
    from shop.models import Product

    product = Product.objects.create(name="pen", price=Decimal("1.50"), data={"c": "blue"})
    with transaction.atomic():
        locked = Product.objects.select_for_update().get(pk=product.pk)
        locked.price = Decimal("2.00")
        locked.save()
    result: dict[str, object] = {"count": Product.objects.filter(data__c="blue").count()}
    try:
        with transaction.atomic(), transaction.atomic():
            Product.objects.create(name="nested", price=1)
    except django.db.Error as exc:
        result["nested"] = sqlstate(exc)
    try:
        result["iterated"] = len(list(Product.objects.iterator(chunk_size=10)))
    except django.db.Error as exc:
        result["iterated"] = sqlstate(exc)
    return result


def main() -> None:
    step = sys.argv[1]
    try:
        if step == "migrate":
            call_command("migrate", verbosity=0)
            out: dict[str, object] = {"ok": True, "tables": connection.introspection.table_names()}
        else:
            out = {"ok": True, **orm()}
    except Exception as exc:  # report, do not crash: the test reads the SQLSTATE
        out = {"ok": False, "sqlstate": sqlstate(exc), "error": str(exc)}
    print(json.dumps(out))


main()
