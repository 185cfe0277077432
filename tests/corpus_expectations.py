"""What the real corpus in ../shared/data/docs must turn into (see its MANIFEST.tsv)."""

# Files that cannot become text, by manifest path, with the kind their `why` and `observed`
# columns call for. Every other file in the manifest must give text.
UNREADABLE = {
    # "needs user password ...": the empty password does not open them (decrypt_empty_pw 0)
    "pdf/encrypted/pypdf__libreoffice-writer-password.pdf": "encrypted",
    "pdf/encrypted/unstr__password.pdf": "encrypted",
    "pdf/encrypted/tika__testPassword4Spaces.pdf": "encrypted",
    "pdf/encrypted/tika__testUnicodePassword.pdf": "encrypted",
    "pdf/encrypted/tika__testPDF_no_extract_no_accessibility_owner_user.pdf": "encrypted",
    # "image only", "no text layer", "flattened page image": scans without OCR
    "pdf/scanned/pymupdf__test_3886.pdf": "no_text",
    "pdf/scanned/pymupdf__test_4034.pdf": "no_text",
    "pdf/scanned/pymupdf__test_3863.pdf": "no_text",
    "pdf/scanned/unstr__loremipsum-flat.pdf": "no_text",
    "pdf/scanned/unstr__single_table.pdf": "no_text",
    "pdf/scanned/tika__testOCR.pdf": "no_text",
    "pdf/scanned/pypdf__imagemagick-CCITTFaxDecode.pdf": "no_text",
    "pdf/metadata/tika__testPDF_twoAuthors.pdf": "no_text",  # "no text layer"
    # "Invalid object in /Pages": MuPDF's repair finds no pages
    "pdf/malformed/pypdf__unreadablemetadata.pdf": "malformed",
    # "461-byte broken file: no startxref": the repaired page is blank, with no image
    "pdf/malformed/tika__testPDF_malformedXFA.pdf": "malformed",
    # "password-protected (OLE/CFB EncryptedPackage)"
    "docx/encrypted/tika__testWORD_protected_passtika.docx": "encrypted",
    # "763-byte truncated zip"
    "docx/malformed/tika__testWORD_truncated.docx": "malformed",
    # "legacy binary .doc (not OOXML) - should be rejected cleanly"
    "docx/wrong_format/unstr__fake.doc": "unsupported_format",
    # "inline images, no text", "chart, text only inside chart part", "picture in header"
    "docx/images/pydocx__having-images.docx": "no_text",
    "docx/images/tika__testWORD_charts.docx": "no_text",
    "docx/headers/tika__headerPic.docx": "no_text",
    # "chars": 0 and no pictures: documents with nothing in them ("3 tables" are empty)
    "docx/structure/pydocx__doc-default.docx": "empty",
    "docx/structure/pydocx__sty-having-no-styles-part.docx": "empty",
    "docx/metadata/pydocx__doc-coreprops.docx": "empty",
    "docx/metadata/pydocx__doc-no-coreprops.docx": "empty",
    "docx/metadata/tika__testWORD_multi_authors.docx": "empty",
    "docx/tables/pydocx__tbl-having-tables.docx": "empty",
}
