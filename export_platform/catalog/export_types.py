"""The declared export types. Adding a type means adding one `ExportType` here."""

from .registry import ExportType, Filter, Operator, Registry, ValueType

T, I, N, D = ValueType.TEXT, ValueType.INTEGER, ValueType.NUMERIC, ValueType.DATE
MIN, MAX, MAX_DATE_END = Operator.MIN, Operator.MAX, Operator.MAX_DATE_END

users = ExportType(
    name="users",
    relation="users",
    description="Application users (filter names as the Node export services had them).",
    columns=(
        "id", "name", "email", "signup_date", "country_code", "subscription_tier",
        "lifetime_value", "updated_at",
    ),
    order_by=("id",),
    chunk_key="id",
    filters=(
        Filter("country_code", "country_code", T, multi=True, description="ISO country code(s)"),
        Filter("subscription_tier", "subscription_tier", T, multi=True, description="Tier(s)"),
        Filter("lifetime_value_min", "lifetime_value", N, MIN, description="Lifetime value >="),
        Filter("lifetime_value_max", "lifetime_value", N, MAX, description="Lifetime value <="),
        Filter("signup_date_from", "signup_date", D, MIN, description="Signed up on or after"),
        Filter("signup_date_to", "signup_date", D, MAX, description="Signed up on or before"),
    ),
)

ezpass_transactions = ExportType(
    name="ezpass_transactions",
    relation="ezpass_transactions",
    description="E-ZPass toll transactions (filter names as the FastAPI/Celery system had them).",
    columns=(
        "id", "transaction_id", "posting_date", "transaction_date", "amount", "plate_number",
        "entry_plaza", "exit_plaza", "status", "driver_id", "medallion_no", "vin", "updated_at",
    ),
    order_by=("id",),
    chunk_key="id",
    filters=(
        Filter("from_posting_date", "posting_date", D, MIN, description="Posted on or after"),
        Filter("to_posting_date", "posting_date", D, MAX, description="Posted on or before"),
        Filter("from_transaction_date", "transaction_date", D, MIN,
               description="Transaction on or after this day (UTC)"),
        Filter("to_transaction_date", "transaction_date", D, MAX_DATE_END,
               description="Transaction on or before this day (UTC, whole day included)"),
        Filter("from_amount", "amount", N, MIN, description="Amount >="),
        Filter("to_amount", "amount", N, MAX, description="Amount <="),
        Filter("plate_number", "plate_number", T, multi=True, description="Plate number(s)"),
        Filter("transaction_id", "transaction_id", I, multi=True, description="Transaction id(s)"),
        Filter("entry_plaza", "entry_plaza", T, multi=True, description="Entry plaza(s)"),
        Filter("status", "status", T, multi=True, description="Status(es)"),
        Filter("driver_id", "driver_id", I, multi=True, description="Driver id(s)"),
        Filter("medallion_no", "medallion_no", T, multi=True, description="Medallion number(s)"),
        Filter("vin", "vin", T, multi=True, description="Vehicle identification number(s)"),
    ),
)

ledger_postings = ExportType(
    name="ledger_postings",
    relation="ledger_postings",
    description="General-ledger postings, one row per debit or credit line.",
    columns=(
        "id", "journal_id", "account_code", "posting_date", "posted_at", "amount", "currency",
        "description", "memo",
    ),
    order_by=("id",),
    chunk_key="id",
    filters=(
        Filter("account_code", "account_code", T, multi=True, description="Account code(s)"),
        Filter("currency", "currency", T, multi=True, description="ISO currency code(s)"),
        Filter("journal_id", "journal_id", I, multi=True, description="Journal id(s)"),
        Filter("from_posting_date", "posting_date", D, MIN, description="Posted on or after"),
        Filter("to_posting_date", "posting_date", D, MAX, description="Posted on or before"),
        Filter("from_amount", "amount", N, MIN, description="Amount >="),
        Filter("to_amount", "amount", N, MAX, description="Amount <="),
    ),
)

REGISTRY = Registry([users, ezpass_transactions, ledger_postings])
