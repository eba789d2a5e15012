"""Regenerate the binary files of the sample corpus from the text in this script.

    python samples/tools/build_binaries.py

Needs fpdf2, Pillow, python-docx and openpyxl (dev-only: fpdf2). The files are committed,
so this only runs when their content changes. Text is drawn with Pillow's bundled font, so
the scanned page looks the same on any machine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "corpus"

WHITEPAPER: list[tuple[str, str]] = [
    ("h1", "Orbitask security whitepaper"),
    (
        "p",
        "Version 3.0, January 2024. This paper describes how Orbit Labs protects the data that "
        "customers keep in Orbitask.",
    ),
    ("h2", "Data encryption"),
    (
        "p",
        "All customer data is encrypted at rest with AES-256 and in transit with TLS 1.2 or later. "
        "Encryption keys are held in a cloud key management service and rotated every 90 days.",
    ),
    ("h2", "Data residency"),
    (
        "p",
        "Workspaces are hosted in one of two regions: EU (Frankfurt, Germany) or US (Oregon, USA). "
        "The region is chosen when the workspace is created. Data, backups and search indexes stay "
        "in that region.",
    ),
    ("h2", "Backups"),
    (
        "p",
        "Encrypted backups are taken every 6 hours and kept for 35 days. Restores are tested every "
        "month. The recovery point objective (RPO) is 6 hours and the recovery time objective (RTO) "
        "is 4 hours.",
    ),
    ("page", ""),
    ("h2", "Access control"),
    (
        "p",
        "Employees reach production systems only through a bastion host that requires a hardware "
        "security key. All access is logged and reviewed every quarter. Customers on the Business and "
        "Enterprise plans can enforce SAML single sign-on; Enterprise adds SCIM provisioning.",
    ),
    ("h2", "Audits and testing"),
    (
        "p",
        "Orbitask is audited for SOC 2 Type II every year. The latest report covers 2023 and is "
        "available under NDA. An independent firm runs a penetration test of the product every year.",
    ),
    ("h2", "Deletion"),
    (
        "p",
        "When a workspace is deleted, its data is purged from production within 30 days and disappears "
        "from backups when they expire, at most 35 days later.",
    ),
]

SLA_LINES: list[tuple[str, str]] = [
    ("title", "Orbit Labs Service Level Agreement"),
    ("head", "Amendment 3"),
    ("body", "Effective date: 1 September 2023"),
    ("gap", ""),
    ("body", "This amendment changes the uptime commitment. Orbit Labs commits"),
    ("body", "to 99.9% monthly uptime for Business workspaces and 99.95% for"),
    ("body", "Enterprise workspaces."),
    ("gap", ""),
    ("body", "Service credits: if monthly uptime falls below the commitment, the"),
    ("body", "customer receives a credit of 10% of that month's fee. Below 99.0%"),
    ("body", "uptime the credit is 25%."),
    ("gap", ""),
    ("body", "Claims must reach support@orbitask.example within 30 days after the"),
    ("body", "end of the affected month. Maintenance announced 48 hours in advance"),
    ("body", "does not count as downtime."),
    ("gap", ""),
    ("body", "Signed for Orbit Labs: Dana Whitfield, VP Operations"),
]


def build_whitepaper(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_title("Orbitask security whitepaper")
    pdf.set_author("Orbit Labs")
    pdf.set_creation_date(dt.datetime(2024, 1, 15, tzinfo=dt.UTC))
    pdf.set_margins(20, 20, 20)
    pdf.add_page()
    for kind, text in WHITEPAPER:
        if kind == "page":
            pdf.add_page()
        elif kind == "h1":
            pdf.set_font("Helvetica", "B", 20)
            pdf.multi_cell(0, 10, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
        elif kind == "h2":
            pdf.set_font("Helvetica", "B", 14)
            pdf.ln(3)
            pdf.multi_cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
        else:
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    pdf.output(str(path))


def build_scanned_sla(path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    # A5-ish page at 150 dpi: big enough for reliable OCR, small enough to stay < 200 KB.
    img = Image.new("L", (1100, 1000), 246)
    draw = ImageDraw.Draw(img)
    sizes = {"title": 40, "head": 36, "body": 26}
    y = 60
    for kind, text in SLA_LINES:
        if kind == "gap":
            y += 22
            continue
        font = ImageFont.load_default(size=sizes[kind])
        draw.text((60, y), text, fill=25, font=font)
        y += int(sizes[kind] * 1.45)
    # Image-only PDF: no text layer, so the parser has to OCR it.
    import time

    signed = time.strptime("2023-08-24", "%Y-%m-%d")  # Pillow's PDF writer wants a struct_time
    img.save(
        path, "PDF", resolution=150.0, title="Signed SLA amendment 3", creationDate=signed, modDate=signed
    )


def build_checklist(path: Path) -> None:
    import docx

    d = docx.Document()
    props = d.core_properties
    props.title = "Admin onboarding checklist"
    props.author = "Orbit Labs Customer Success"
    props.created = dt.datetime(2024, 4, 10, 9, 0)
    props.modified = dt.datetime(2024, 4, 10, 9, 0)
    d.add_paragraph("Admin onboarding checklist", style="Title")
    d.add_paragraph("For the first admin of a new Orbitask workspace.")
    d.add_heading("Before you invite your team", level=1)
    d.add_paragraph("Pick the data region (EU or US) carefully: it cannot be changed in the app later.")
    for item in (
        "Verify your company domain in Settings > Workspace > Domains.",
        "Turn on SAML single sign-on (Business and Enterprise plans).",
        "Decide who gets the Admin role.",
    ):
        d.add_paragraph(item, style="List Bullet")
    d.add_heading("First week", level=1)
    rows = [
        ("Task", "Owner", "When"),
        ("Create a project for each team", "Team leads", "Day 1"),
        ("Invite members and guests", "Workspace admin", "Day 1"),
        ("Connect webhooks", "Engineering", "Day 3"),
        ("Review roles and API keys", "Workspace admin", "Day 5"),
    ]
    table = d.add_table(rows=len(rows), cols=3)
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    d.add_heading("Roles", level=1)
    d.add_paragraph(
        "Orbitask has four roles: Owner, Admin, Member and Guest. There is exactly one Owner per "
        "workspace; ownership can be transferred in Settings > Workspace > Ownership."
    )
    d.save(str(path))


def build_release_history(path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    wb.properties.title = "Orbitask release history"
    wb.properties.created = dt.datetime(2024, 8, 1)
    wb.properties.modified = dt.datetime(2024, 8, 1)
    ws = wb.active
    ws.title = "Releases"
    ws.append(["Version", "Released", "Highlights"])
    for version, day, text in [
        ("2.0", dt.date(2023, 3, 14), "REST API v2 and webhooks"),
        ("2.1", dt.date(2023, 6, 6), "Due-date reminders by email"),
        ("2.2", dt.date(2023, 9, 1), "99.9% uptime SLA for Business (SLA amendment 3)"),
        ("2.3", dt.date(2023, 11, 2), "SCIM provisioning for Enterprise; read and write scopes for API keys"),
        ("2.4", dt.date(2024, 2, 5), "Webhook signatures with timestamps; API v1 removed"),
        ("2.5", dt.date(2024, 5, 20), "Data export to CSV; winget package for Windows"),
        ("2.6", dt.date(2024, 8, 1), "Recurring tasks; guest limit on Business raised to 25"),
    ]:
        ws.append([version, day, text])
    dep = wb.create_sheet("Deprecations")
    dep.append(["Feature", "Removed in", "Replacement"])
    dep.append(["REST API v1", "2.4", "REST API v2"])
    dep.append(["Unsigned webhooks", "2.4", "Signed webhooks (Orbitask-Signature header)"])
    wb.save(str(path))
    _pin_xlsx_modified(path, "2024-08-01T00:00:00Z")


def _pin_xlsx_modified(path: Path, stamp: str) -> None:
    """openpyxl stamps dcterms:modified with the save time; pin it so the sample's date is stable."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as zin:
        items = [(info, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, data in items:
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + stamp.encode(), data)
            zout.writestr(info, data)


def main() -> None:
    build_whitepaper(CORPUS / "handbook" / "security-whitepaper.pdf")
    build_scanned_sla(CORPUS / "legal" / "signed-sla-amendment-3.pdf")
    build_checklist(CORPUS / "handbook" / "admin-onboarding-checklist.docx")
    build_release_history(CORPUS / "releases" / "release-history.xlsx")


if __name__ == "__main__":
    main()
