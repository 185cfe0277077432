"""One dynamic partition per document; the key is `sources.document_id_for(uri)`."""

import dagster as dg

documents_partitions = dg.DynamicPartitionsDefinition(name="documents")
