"""The table: creating it with Grove's keys, checking them, and turning TTL on.

Invariants: a table is Grove's when its hash key is the string ``pk`` and its range key
the string ``sk``; creating is idempotent; DynamoDB's TTL is only ever turned on for the
configured expiry attribute, never moved from another one.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from grove.caches.aws_dynamodb.client import Connection, _error_code
from grove.exceptions import ConfigurationException

_logger = logging.getLogger("grove.caches.aws_dynamodb")


class TableAdmin(Connection):
    """Creating and checking the handler's table."""

    def _check_schema(self, table: dict[str, Any]) -> None:
        """Make sure a table has Grove's keys.

        :param table: The table's description, as ``DescribeTable`` answers it.
        :raises ConfigurationException: It has other keys.
        """
        keys = {key["AttributeName"]: key["KeyType"] for key in table.get("KeySchema", [])}
        types = {
            attribute["AttributeName"]: attribute["AttributeType"]
            for attribute in table.get("AttributeDefinitions", [])
        }
        if (
            keys != {"pk": "HASH", "sk": "RANGE"}
            or types.get("pk") != "S"
            or types.get("sk") != "S"
        ):
            raise ConfigurationException(
                f"{self.location()} exists with keys {keys} of types {types}; Grove needs a "
                "string hash key 'pk' and a string range key 'sk' "
                "(GROVE_CACHE_AWS_DYNAMODB_TABLE names another table)"
            )

    def _missing_table_message(self) -> str:
        config = self.config
        endpoint = f" --endpoint-url {config.url}" if config.url else ""
        return (
            f"DynamoDB table {self._table!r} does not exist in region {config.region}"
            + (f" at {config.url}" if config.url else "")
            + " (GROVE_CACHE_AWS_DYNAMODB_TABLE, GROVE_CACHE_AWS_DYNAMODB_TABLE_REGION). "
            "Create it with grove.caches.aws_dynamodb.create_table(), or with: "
            f"aws dynamodb create-table --table-name {self._table} --region {config.region}"
            f"{endpoint} --attribute-definitions AttributeName=pk,AttributeType=S "
            "AttributeName=sk,AttributeType=S --key-schema AttributeName=pk,KeyType=HASH "
            "AttributeName=sk,KeyType=RANGE --billing-mode PAY_PER_REQUEST"
        )

    def create_table(self, *, timeout: float = 300.0) -> bool:
        """Create the table with Grove's schema and on-demand billing, if it is missing.

        Idempotent: an existing table with the right keys is left as it is. Either way,
        this waits until the table is active, then turns DynamoDB's TTL on for the
        expiry attribute (``GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE``) if it is off, so
        that DynamoDB removes expired entries by itself, within days. Where the policy
        does not allow it, a warning says so: expiry works all the same, and
        :meth:`~grove.caches.atomic.ExpiringCache.sweep_expired` removes what expired.

        :param timeout: Seconds to wait for the table to become active.
        :raises ConfigurationException: The table exists with other keys, or its TTL is
            on another attribute.
        :raises AccessException: DynamoDB refused or failed, or the table did not become
            active in time.
        :return: ``True`` when the table was created, ``False`` when it existed.
        """
        try:
            try:
                self._request(
                    "CreateTable",
                    {
                        "TableName": self._table,
                        "AttributeDefinitions": [
                            {"AttributeName": "pk", "AttributeType": "S"},
                            {"AttributeName": "sk", "AttributeType": "S"},
                        ],
                        "KeySchema": [
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "sk", "KeyType": "RANGE"},
                        ],
                        "BillingMode": "PAY_PER_REQUEST",
                    },
                )
                created = True
            except ClientError as exc:
                if _error_code(exc) != "ResourceInUseException":
                    raise
                created = False
            delay = 2
            self.client.get_waiter("table_exists").wait(
                TableName=self._table,
                WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout // delay))},
            )
            table = self._request("DescribeTable", {"TableName": self._table})["Table"]
        except (ClientError, BotoCoreError, WaiterError) as exc:
            raise self._failure("create_storage", exc) from exc
        self._check_schema(table)
        self._enable_ttl()
        return created

    def _enable_ttl(self) -> None:
        """Turn DynamoDB's TTL on for the expiry attribute, unless it is on already.

        :raises ConfigurationException: TTL is on for another attribute.
        :raises AccessException: DynamoDB failed.
        """
        try:
            ttl = self._request("DescribeTimeToLive", {"TableName": self._table})
            state = ttl["TimeToLiveDescription"]
            if state.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                if state.get("AttributeName") == self._ttl:
                    return
                raise ConfigurationException(
                    f"{self.location()} has DynamoDB's TTL on attribute "
                    f"{state.get('AttributeName')!r}, and a table has one TTL attribute: set "
                    f"GROVE_CACHE_AWS_DYNAMODB_TTL_ATTRIBUTE to it (not {self._ttl!r})"
                )
            self._request(
                "UpdateTimeToLive",
                {
                    "TableName": self._table,
                    "TimeToLiveSpecification": {"Enabled": True, "AttributeName": self._ttl},
                },
            )
        except ClientError as exc:
            if _error_code(exc) != "AccessDeniedException":
                raise self._failure("create_storage", exc, where=f"TTL on {self._ttl!r}") from exc
            _logger.warning(
                "%s: not allowed to turn DynamoDB's TTL on for %r, so DynamoDB will not remove "
                "expired entries by itself (sweep_expired() does): %s",
                self.location(),
                self._ttl,
                exc,
            )
        except BotoCoreError as exc:
            raise self._failure("create_storage", exc, where=f"TTL on {self._ttl!r}") from exc
