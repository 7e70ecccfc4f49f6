"""Django settings for the third-party test: the connection comes from the environment."""

import os

SECRET_KEY = "test-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["shop"]
if os.environ.get("WITH_AUTH"):
    INSTALLED_APPS += ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "USER": "admin",
        "PASSWORD": os.environ["TEST_DSQL_TOKEN"],
        "HOST": os.environ["TEST_DSQL_HOST"],
        "PORT": os.environ["TEST_DSQL_PORT"],
        "OPTIONS": {
            "sslmode": "verify-full",
            "sslrootcert": os.environ["TEST_DSQL_CA"],
            "hostaddr": os.environ["TEST_DSQL_HOSTADDR"],
        },
        # DSQL has no DECLARE: Django's .iterator() needs client-side cursors.
        "DISABLE_SERVER_SIDE_CURSORS": bool(os.environ.get("NO_SERVER_CURSORS")),
    }
}
