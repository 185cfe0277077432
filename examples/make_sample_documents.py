"""Generate the demo document set: Northwind Robotics and its Kestrel K2 robot vacuum.

Five documents in five shapes (PDF handbook, DOCX policy, Markdown notice and policy, HTML
release notes), each full of specific facts so that questions have one clear answer; see
`examples/sample_questions.jsonl`. Output is byte-for-byte the same on every run.

Usage: python examples/make_sample_documents.py [TARGET_DIR]   (default: examples/sample_documents/)
"""

from __future__ import annotations

import datetime as dt
import io
import sys
import zipfile
from pathlib import Path

import docx
import pymupdf

DEFAULT_TARGET = Path(__file__).resolve().parent / "sample_documents"

# One fixed timestamp for every "created"/"modified" field, so the bytes never change.
CREATED = dt.datetime(2026, 3, 16, 9, 0, 0, tzinfo=dt.UTC)
PDF_DATE = "D:20260316090000+00'00'"

# --------------------------------------------------------------------------------------
# 1. Kestrel K2 User Handbook (PDF)
# --------------------------------------------------------------------------------------

HANDBOOK_TITLE = "Kestrel K2 User Handbook"

HANDBOOK_CSS = """
body { font-family: sans-serif; font-size: 9.5pt; line-height: 1.3; color: #222; }
h1 { font-size: 16pt; color: #1f4e79; margin-top: 0; margin-bottom: 6pt; page-break-before: always; }
h2 { font-size: 11.5pt; color: #1f4e79; margin-top: 10pt; margin-bottom: 3pt; }
p, li { margin-top: 0; margin-bottom: 5pt; text-align: justify; }
table { border-collapse: collapse; margin-bottom: 8pt; width: 100%; }
th { text-align: left; color: #1f4e79; }
th, td { border: 0.5pt solid #8a9bb0; padding: 2pt 4pt; font-size: 8.5pt; vertical-align: top; }
.cover-title { font-size: 26pt; font-weight: bold; color: #1f4e79; margin-top: 110pt; }
.cover-sub { font-size: 12pt; margin-top: 8pt; }
.note { font-style: italic; }
"""

HANDBOOK_HTML = """
<p class="cover-title">Kestrel K2</p>
<p class="cover-sub">Home Robot Vacuum &mdash; User Handbook</p>
<p>Model NW-K2 &middot; Handbook edition 1.2 &middot; March 2026</p>
<p style="margin-top: 170pt">Northwind Robotics GmbH<br/>Lindenstra&szlig;e 14, 10969 Berlin, Germany<br/>
support@northwind-robotics.example &middot; +49 30 5557 2200</p>

<!-- "ac-<br/>count" below is a word hyphenated across a line break on purpose, as in
     real PDFs, so that text extraction has to join it again. -->
<h1>1 Getting started</h1>
<p>Thank you for choosing the Kestrel K2. This handbook explains how to set up, use and look
after your robot. Please read the safety notes in this chapter before the first run and keep
the handbook for later reference.</p>
<h2>1.1 What is in the box</h2>
<ul>
<li>Kestrel K2 robot with the main roller brush and dustbin already fitted</li>
<li>Charging dock KD-20 and power adapter (100&ndash;240 V, 50/60 Hz)</li>
<li>Two side brushes (one spare) and one spare HEPA filter</li>
<li>Quick start card and this handbook</li>
</ul>
<h2>1.2 Placing the charging dock</h2>
<p>Put the charging dock on a hard, level floor with its back against a wall. Leave at least
0.5 metres of free space on the left and right of the dock and 1.5 metres in front of it, and
keep it out of direct sunlight, because strong light can confuse the docking sensors. Plug in
the power adapter; the status light on the dock glows white when it has power.</p>
<h2>1.3 Switching on and connecting the app</h2>
<p>Press and hold the power button on top of the robot for 3 seconds until the light ring
turns blue. Install the Northwind Home app, create an ac-<br/>count and tap Add device. The Kestrel
K2 connects to 2.4 GHz Wi-Fi networks only; 5 GHz networks are not supported. The app
guides you through entering your network password.</p>
<h2>1.4 The first run</h2>
<p>On its first run the robot performs an exploration run to build a map of your home with
its LiDAR sensor. The exploration run takes 20 to 40 minutes for a typical apartment. Open
interior doors, lift cables and loose socks off the floor, and do not move the charging dock
afterwards, or the robot will need to map the home again.</p>
<p class="note">Safety: do not use the robot outdoors or on wet floors.</p>

<h1>2 Charging and battery</h1>
<p>The Kestrel K2 uses a 5,200 mAh lithium-ion battery (14.4 V). A full charge from empty
takes about 4 hours on the charging dock KD-20. The light ring pulses white while charging and
stays solid white when the battery is full.</p>
<h2>2.1 Runtime</h2>
<p>On a full charge the battery lasts up to 150 minutes in Eco mode, about 110 minutes in
Standard mode and about 75 minutes in Max mode. Carpet Boost and mopping shorten the runtime.</p>
<h2>2.2 Recharge and resume</h2>
<p>When the battery falls to 15 percent the robot stops cleaning and returns to the dock by
itself. Once it has recharged to 80 percent it resumes cleaning where it left off. You can
turn Recharge and Resume off in the app under Settings &rsaquo; Cleaning.</p>
<h2>2.3 Looking after the battery</h2>
<p>The battery is designed for about 600 full charge cycles before its capacity drops below
80 percent. Charge only at room temperatures between 0 and 40 &deg;C. If you will not use the
robot for more than 30 days, charge it fully, switch it off and store it in a cool, dry place
between 10 and 30 &deg;C. Recharge a stored robot at least every 3 months so that the
battery does not deep-discharge.</p>
<p>Replacement batteries (part number KB-52) are available from Northwind Robotics and from
authorised service partners. Use only original batteries; third-party batteries void the
battery warranty.</p>

<h1>3 Cleaning modes</h1>
<p>Choose a suction level in the app or press the mode button on the robot to cycle through
the three suction levels. The robot remembers the last mode used.</p>
<table>
<tr><th>Mode</th><th>Suction</th><th>Noise</th><th>Best for</th></tr>
<tr><td>Eco</td><td>1,000 Pa</td><td>58 dB</td><td>Daily cleaning of hard floors, quiet hours</td></tr>
<tr><td>Standard</td><td>2,500 Pa</td><td>64 dB</td><td>Mixed floors and low-pile rugs</td></tr>
<tr><td>Max</td><td>5,000 Pa</td><td>70 dB</td><td>Carpets, pet hair, weekly deep clean</td></tr>
</table>
<h2>3.1 Special modes</h2>
<p><b>Spot mode</b> cleans a square of 1.5 by 1.5 metres around the robot in about 2 minutes;
start it by pressing the mode button twice. <b>Edge mode</b> follows walls and furniture
edges only. <b>Carpet Boost</b> switches to Max suction automatically whenever the robot
detects carpet and returns to the chosen mode on hard floors.</p>
<h2>3.2 Schedules and quiet hours</h2>
<p>You can create up to 7 cleaning schedules in the app, each with its own rooms, suction
level and days of the week. During Do Not Disturb hours, which are set to 22:00&ndash;08:00
by default, the robot does not start scheduled runs and the voice prompts are muted.</p>
<h2>3.3 Room cleaning</h2>
<p>After the exploration run the app splits the map into rooms. Tap one or more rooms to clean
them in the order you choose. You can rename, merge and split rooms, and the robot can store
maps for up to 3 floors.</p>

<h1>4 Maintenance</h1>
<p>Regular care keeps suction strong and extends the life of the robot. Switch the robot off
before any maintenance. The app counts the operating hours of each part and reminds you when
a part is due.</p>
<h2>4.1 Dustbin and filter</h2>
<p>Empty the 400 ml dustbin after every run. Tap the HEPA filter (part number KF-12) gently
against the rim of a bin once a week to shake out dust. Do not wash the filter with water.
Replace the filter every 3 months, or every 2 months if you have pets.</p>
<h2>4.2 Brushes</h2>
<p>Remove hair from the main roller brush once a week with the cutting tool built into the
dustbin. Replace the main roller brush (KR-1) every 6 to 12 months. The side brushes (KB-2)
are held by a single Phillips screw; replace them every 3 to 6 months, or sooner when the
bristles are bent.</p>
<h2>4.3 Maintenance schedule</h2>
<table>
<tr><th>Part</th><th>Clean</th><th>Replace</th></tr>
<tr><td>Dustbin (400 ml)</td><td>After every run</td><td>&mdash;</td></tr>
<tr><td>HEPA filter KF-12</td><td>Weekly</td><td>Every 3 months</td></tr>
<tr><td>Main roller brush KR-1</td><td>Weekly</td><td>Every 6&ndash;12 months</td></tr>
<tr><td>Side brushes KB-2</td><td>Monthly</td><td>Every 3&ndash;6 months</td></tr>
<tr><td>Cliff sensors and charging contacts</td><td>Monthly, with a dry cloth</td><td>&mdash;</td></tr>
<tr><td>Drive wheels</td><td>Monthly</td><td>When worn (service partner)</td></tr>
</table>

<h1>5 Troubleshooting</h1>
<p>When the robot stops because of a problem, the light ring flashes red, the robot announces
an error code and the app shows the same code. Fix the cause and press the power button to
continue. If an error keeps coming back, contact Northwind Robotics support.</p>
<table>
<tr><th>Code</th><th>Meaning</th><th>Likely cause</th><th>What to do</th></tr>
<tr><td>E1</td><td>Left wheel stuck</td><td>Hair or thread around the wheel axle</td>
<td>Lift the robot, turn the wheel by hand and remove the debris.</td></tr>
<tr><td>E2</td><td>Right wheel stuck</td><td>Hair or thread around the wheel axle</td>
<td>Lift the robot, turn the wheel by hand and remove the debris.</td></tr>
<tr><td>E3</td><td>Main brush jammed</td><td>Cable, sock or long hair caught in the roller</td>
<td>Remove the brush guard, take out the roller brush and clean it.</td></tr>
<tr><td>E4</td><td>Side brush stuck</td><td>Hair wrapped around the side brush</td>
<td>Unscrew the side brush, remove the hair and refit it, or fit the spare brush.</td></tr>
<tr><td>E5</td><td>Bumper stuck</td><td>Bumper pressed for more than 5 seconds</td>
<td>Tap the bumper several times to free it and move the robot to open floor.</td></tr>
<tr><td>E6</td><td>Cliff sensor error</td><td>Dirty cliff sensors or a very dark carpet</td>
<td>Wipe the four cliff sensors with a dry cloth; update to firmware 2.2 or later.</td></tr>
<tr><td>E7</td><td>Dustbin or filter missing</td><td>Dustbin not pushed in or filter not fitted</td>
<td>Refit the filter and push the dustbin in until it clicks.</td></tr>
<tr><td>E8</td><td>Battery temperature out of range</td><td>Room colder than 0 &deg;C or warmer than 40 &deg;C</td>
<td>Move the robot to a room between 0 and 40 &deg;C and let it rest for one hour.</td></tr>
</table>
<h2>5.1 Other problems</h2>
<p><b>The robot does not find the dock.</b> Check that the dock has power and that nothing
blocks the 1.5 metres in front of it. <b>The app cannot find the robot.</b> Make sure your
phone is on the same 2.4 GHz network. To reset the Wi-Fi settings, hold the Home button and
the power button together for 10 seconds until you hear "Wi-Fi reset".</p>

<h1>6 Specifications</h1>
<table>
<tr><th>Item</th><th>Value</th></tr>
<tr><td>Model</td><td>NW-K2</td></tr>
<tr><td>Dimensions</td><td>350 &times; 350 &times; 96 mm</td></tr>
<tr><td>Weight</td><td>3.6 kg</td></tr>
<tr><td>Navigation</td><td>LiDAR laser distance sensor, 3D obstacle sensor</td></tr>
<tr><td>Battery</td><td>Lithium-ion, 14.4 V, 5,200 mAh</td></tr>
<tr><td>Runtime</td><td>Up to 150 minutes (Eco mode)</td></tr>
<tr><td>Charging time</td><td>About 4 hours</td></tr>
<tr><td>Maximum suction</td><td>5,000 Pa</td></tr>
<tr><td>Dustbin capacity</td><td>400 ml</td></tr>
<tr><td>Noise level</td><td>58&ndash;70 dB</td></tr>
<tr><td>Climbing height</td><td>Up to 2 cm</td></tr>
<tr><td>Rated power</td><td>45 W</td></tr>
<tr><td>Wi-Fi</td><td>2.4 GHz, IEEE 802.11 b/g/n</td></tr>
<tr><td>Charging dock</td><td>KD-20, input 100&ndash;240 V, 50/60 Hz</td></tr>
</table>
<p>Specifications may change without notice as part of product improvements. The
current firmware version is shown in the app under Settings &rsaquo; About.</p>
"""


def write_handbook_pdf(path: Path) -> None:
    """Lay out HANDBOOK_HTML on A5 pages, then add header, footer, outline and metadata."""
    page_rect = pymupdf.paper_rect("a5")
    text_rect = page_rect + (45, 55, -45, -50)
    headings: list[list] = []

    def record_heading(position) -> None:
        if position.heading and position.open_close & 1:
            headings.append([position.heading, position.text.strip(), position.page_num])

    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer)
    story = pymupdf.Story(HANDBOOK_HTML, user_css=HANDBOOK_CSS)
    # Every rectangle the story asks for is a fresh page with the same text area.
    story.write(writer, lambda *_: (page_rect, text_rect, None), record_heading)
    writer.close()

    doc = pymupdf.open("pdf", buffer.getvalue())
    running_text = {"fontname": "helv", "fontsize": 8, "color": (0.35, 0.35, 0.35)}
    for page in doc:
        width, height = page.rect.width, page.rect.height
        page.insert_text((45, 35), HANDBOOK_TITLE, **running_text)
        page.draw_line((45, 40), (width - 45, 40), color=(0.6, 0.6, 0.6), width=0.5)
        footer = f"Page {page.number + 1} of {doc.page_count}"
        footer_width = pymupdf.get_text_length(footer, fontname="helv", fontsize=8)
        page.insert_text(((width - footer_width) / 2, height - 25), footer, **running_text)
    doc.set_toc(headings)
    doc.set_metadata(
        {
            "title": HANDBOOK_TITLE,
            "author": "Northwind Robotics GmbH",
            "subject": "Kestrel K2 home robot vacuum: set-up, use, maintenance and troubleshooting",
            "keywords": "Kestrel K2, NW-K2, robot vacuum, handbook",
            "creator": "examples/make_sample_documents.py",
            "producer": "PyMuPDF",
            "creationDate": PDF_DATE,
            "modDate": PDF_DATE,
        }
    )
    # no_new_id keeps the trailer /ID from being random, so reruns give the same bytes.
    doc.save(path, garbage=3, deflate=True, no_new_id=True)
    doc.close()


# --------------------------------------------------------------------------------------
# 2. Warranty and Returns Policy (DOCX)
# --------------------------------------------------------------------------------------

# Blocks are separated by blank lines: "# "/"## " a heading (title/level 1), "- " bullet
# items, "|" a table whose first row is the header, anything else a paragraph.
WARRANTY_TEXT = """\
# Warranty and Returns Policy

This policy applies to the Kestrel K2 home robot vacuum (model NW-K2) and its accessories
bought new from Northwind Robotics GmbH or an authorised retailer in the European Union,
the United Kingdom or Switzerland. It is valid from 1 February 2026 and replaces version
3.0. Your statutory rights as a consumer are not affected.

## 1. Returns

You may return a product bought directly from Northwind Robotics within 30 days of
delivery for a full refund, for any reason. The product must be complete, with all
accessories, and in its original packaging. Return shipping is free within the EU; start a
return in the Northwind Home app or at northwind-robotics.example/returns to receive a
prepaid label.

We refund the purchase price to the original payment method within 14 days of receiving
the returned product. If the product shows damage beyond normal testing, we deduct a
restocking fee of 15 percent of the purchase price. Products bought from a retailer must be
returned to that retailer under its own return policy.

## 2. Warranty periods

Northwind Robotics warrants that each component below is free from defects in materials
and workmanship for the period shown, counted from the date of delivery to the first end
customer.

| Component | Warranty period | Notes |
| Main unit (chassis, electronics, sensors) | 2 years | Includes the LiDAR sensor |
| Suction motor | 2 years | Brushless motor, part M-45 |
| Battery KB-52 | 12 months | Or 300 charge cycles, whichever comes first |
| Charging dock KD-20 | 12 months | Includes the power adapter |
| Filters, brushes and other consumables | 6 months | Manufacturing defects only |
| Replacement parts fitted under warranty | 90 days | Or the rest of the original warranty, if longer |

## 3. How to make a warranty claim

- Contact Northwind Robotics support at support@northwind-robotics.example or
  +49 30 5557 2200 (Monday to Friday, 08:00 to 18:00 CET).
- Give the serial number, which starts with K2- and is printed on the label under the
  dustbin, and a proof of purchase.
- Describe the fault and any error code the robot shows.

If the fault is covered, we repair the product or replace it, at our choice. Repairs are
completed within 10 business days of the product reaching our service centre in Leipzig.
If the same fault has to be repaired 3 times, we replace the product.

## 4. What the warranty does not cover

- Normal wear of consumables, such as worn brushes and clogged filters.
- Damage caused by liquids, falls, or use outdoors.
- Repairs or modifications by anyone other than Northwind Robotics or an authorised
  service partner.
- Use with non-original batteries or chargers.
- Commercial use, for example by cleaning companies or in hotels.

## 5. Northwind Care+

Northwind Care+ extends the warranty of the main unit and the suction motor by 2 extra
years and adds one free battery replacement. It costs 49 EUR and can be bought within
60 days of delivery in the Northwind Home app.
"""

WARRANTY_HEADER = "Northwind Robotics GmbH · Warranty and Returns Policy"
WARRANTY_FOOTER = (
    "Policy version 3.1 · Effective 1 February 2026 · Questions: support@northwind-robotics.example"
)


def write_warranty_docx(path: Path) -> None:
    """Build the warranty policy as a Word document with header, footer and properties."""
    document = docx.Document()
    section = document.sections[0]
    section.header.paragraphs[0].text = WARRANTY_HEADER
    section.footer.paragraphs[0].text = WARRANTY_FOOTER
    for block in WARRANTY_TEXT.strip().split("\n\n"):
        if block.startswith("#"):
            hashes, _, title = block.partition(" ")
            document.add_heading(title, level=len(hashes) - 1)
        elif block.startswith("- "):
            for item in block[2:].split("\n- "):
                document.add_paragraph(" ".join(item.split()), style="List Bullet")
        elif block.startswith("|"):
            rows = [
                [cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()
            ]
            table = document.add_table(rows=0, cols=len(rows[0]))
            table.style = "Light Grid Accent 1"
            for row in rows:
                for cell, text in zip(table.add_row().cells, row, strict=True):
                    cell.text = text
        else:
            document.add_paragraph(" ".join(block.split()))
    properties = document.core_properties
    properties.title = "Warranty and Returns Policy"
    properties.subject = "Kestrel K2 home robot vacuum"
    properties.author = "Northwind Robotics Customer Care"
    properties.last_modified_by = "Northwind Robotics Customer Care"
    properties.created = properties.modified = CREATED
    properties.revision = 3
    properties.comments = ""
    _save_docx(document, path)


def _save_docx(document, path: Path) -> None:
    """Save a DOCX with fixed ZIP timestamps; python-docx stamps each member with 'now'."""
    buffer = io.BytesIO()
    document.save(buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for member in source.infolist():
            fixed = zipfile.ZipInfo(member.filename, date_time=CREATED.timetuple()[:6])
            target.writestr(fixed, source.read(member), compress_type=zipfile.ZIP_DEFLATED)


# --------------------------------------------------------------------------------------
# 3.-5. Markdown and HTML documents (written as they are)
# --------------------------------------------------------------------------------------

PRIVACY_NOTICE_MD = """\
# Data Privacy Notice: Northwind Home app and Kestrel K2

*Northwind Robotics GmbH · Last updated 2 March 2026 · Version 2.0*

This notice explains which personal data the Kestrel K2 home robot vacuum and the Northwind
Home app collect, why, and for how long. The controller is Northwind Robotics GmbH,
Lindenstraße 14, 10969 Berlin, Germany.

## 1. What we collect

| Data | Purpose | Kept for |
|---|---|---|
| Account data (name, e-mail address, country) | Running your account | Until you delete the account |
| Floor maps and no-go zones | Navigation and room cleaning | Until you delete the map or the account |
| Cleaning history (date, duration, area, errors) | Showing statistics, support | 12 months |
| Device diagnostics (firmware version, error codes, battery health) | Fixing faults, improving firmware | 24 months, then anonymised |
| App usage analytics | Improving the app (only with your consent) | 14 months |

The Kestrel K2 has no camera and no microphone. It navigates with a LiDAR laser sensor,
which measures distances but does not record images.

## 2. Where your data is stored

Floor maps are stored on the robot and, if cloud backup is on, in our cloud in a data
centre in Frankfurt am Main, Germany, operated for us by our hosting provider. Data
is encrypted in transit with TLS 1.3 and at rest with AES-256. We do not transfer
personal data outside the European Economic Area.

## 3. Legal bases

- Running your account and the robot: performance of a contract (Art. 6(1)(b) GDPR).
- Diagnostics and security: our legitimate interest in safe, working products (Art. 6(1)(f) GDPR).
- App usage analytics: your consent (Art. 6(1)(a) GDPR), which you can withdraw at any
  time under Settings › Privacy in the app.

We never sell personal data and we do not use floor maps for advertising.

## 4. Your rights

You have the right to access, correct, delete and export your data, to restrict or object
to processing, and to complain to a supervisory authority; ours is the Berlin Commissioner
for Data Protection and Freedom of Information.

To delete your account, use Settings › Account › Delete account in the app. We delete the
account and all floor maps within 30 days; backups are overwritten within a further
35 days. A data export (JSON) is available under Settings › Privacy › Export my data and is
ready within 72 hours.

## 5. Contact

Our Data Protection Officer is Dr. Lena Hartmann, reachable at
privacy@northwind-robotics.example or by post at the address above, marked
"Data Protection Officer".
"""

TRAVEL_POLICY_MD = """\
# Travel and Expense Policy

*Northwind Robotics GmbH · Internal: employees only · Owner: Finance · Version 4.2, valid from 1 January 2026*

This policy covers business travel and expenses for all employees of Northwind Robotics
GmbH. Travel must have a clear business purpose and be booked as economically as is
reasonable. Questions go to travel@northwind-robotics.example.

## 1. Booking rules

- Book all flights, trains and hotels through the **TravelDesk** portal. Bookings made
  elsewhere are reimbursed only if they are at least 10 percent cheaper.
- Book flights at least 14 days before departure.
- Take the train for trips under 4 hours door to door; second class for trips under
  2 hours, first class for longer trips.
- Fly economy class for flights under 6 hours and premium economy for flights of 6 hours or
  more. Business class needs the approval of the CFO.
- Rental cars are allowed only when no reasonable public transport exists; book the compact
  category. Using your own car is paid at 0.30 EUR per kilometre.

## 2. Per-diem allowances and hotel limits

Per-diem allowances cover meals and small expenses for each full travel day. Days of
arrival and departure are paid at 50 percent. Hotel limits are per night, including
breakfast and taxes.

| City | Per diem | Hotel limit per night |
|---|---|---|
| Berlin | 45 EUR | 140 EUR |
| Munich | 48 EUR | 160 EUR |
| Hamburg | 44 EUR | 135 EUR |
| Leipzig | 40 EUR | 110 EUR |
| Paris | 52 EUR | 190 EUR |
| London | 55 GBP | 210 GBP |
| New York | 78 USD | 320 USD |
| Shenzhen | 380 CNY | 900 CNY |

For cities not listed, use the German federal rates (BMF table) for that country.

## 3. Approval limits

Every trip and every expense needs approval before money is spent.

| Amount per trip or expense | Approved by |
|---|---|
| Up to 500 EUR | Your line manager |
| 500 to 2,500 EUR | Your department head |
| Over 2,500 EUR | The CFO, Maria Okafor |

## 4. Expense reports

- Submit expense reports in the Expensely tool within 20 working days of the end of the trip.
- Attach a receipt for every expense over 25 EUR; below that, a note is enough.
- Reimbursement is paid with the next monthly salary run.
- Alcohol, minibar, fines and personal entertainment are not reimbursed.
- Business meals with guests need the names and companies of all guests.

## 5. Safety

Register every trip abroad in TravelDesk so that the company can reach you in an emergency.
The 24-hour travel emergency line is +49 30 5557 2999.
"""

RELEASE_NOTES_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Kestrel K2 firmware release notes</title>
<style>
  body { font-family: sans-serif; max-width: 46em; margin: 2em auto; color: #222; }
  h2 { color: #1f4e79; border-bottom: 1px solid #ccc; }
  .date { color: #666; font-size: 0.9em; }
</style>
</head>
<body>
<header>
<h1>Kestrel K2 firmware release notes</h1>
<p>Northwind Robotics GmbH. Firmware updates install automatically over Wi-Fi while the
robot is on the charging dock, between 02:00 and 05:00. You can see the installed version
in the Northwind Home app under Settings › About.</p>
</header>

<article id="v2.4">
<h2>Firmware 2.4</h2>
<p class="date">Released <time datetime="2026-05-05">2026-05-05</time></p>
<ul>
<li>New: suction level per room, so the kitchen can use Max while the bedroom uses Eco.</li>
<li>New: voice prompts in Polish and Spanish.</li>
<li>Fixed: error E4 was sometimes reported when the side brush was turning normally.</li>
</ul>
</article>

<article id="v2.3">
<h2>Firmware 2.3</h2>
<p class="date">Released <time datetime="2026-03-14">2026-03-14</time></p>
<ul>
<li>New: no-go zones and virtual walls. Draw up to 10 no-go zones on the map in the app;
the robot will not enter them.</li>
<li>Improved: docking is faster and more reliable in dark hallways.</li>
</ul>
</article>

<article id="v2.2">
<h2>Firmware 2.2</h2>
<p class="date">Released <time datetime="2025-12-04">2025-12-04</time></p>
<ul>
<li>Fixed: false E6 cliff sensor errors on dark carpets and black tiles.</li>
<li>Improved: the robot now returns to the dock at 15 percent battery instead of 10 percent.</li>
</ul>
</article>

<article id="v2.1">
<h2>Firmware 2.1</h2>
<p class="date">Released <time datetime="2025-09-18">2025-09-18</time></p>
<ul>
<li>New: Carpet Boost switches to Max suction automatically on carpets.</li>
<li>New: Do Not Disturb hours (22:00 to 08:00 by default).</li>
</ul>
</article>

<article id="v2.0">
<h2>Firmware 2.0</h2>
<p class="date">Released <time datetime="2025-06-02">2025-06-02</time></p>
<ul>
<li>New: rewritten LiDAR navigation with maps for up to 3 floors.</li>
<li>New: room cleaning; the app splits the map into rooms after the exploration run.</li>
<li>Changed: requires Northwind Home app 5.0 or later.</li>
</ul>
</article>
</body>
</html>
"""


def write_text_document(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def write_sample_documents(target: Path) -> list[Path]:
    """Write the five sample documents into `target` (created if needed); return their paths."""
    target.mkdir(parents=True, exist_ok=True)
    paths = [
        target / name
        for name in (
            "kestrel-k2-user-handbook.pdf",
            "warranty-and-returns-policy.docx",
            "data-privacy-notice.md",
            "travel-and-expense-policy.md",
            "release-notes.html",
        )
    ]
    write_handbook_pdf(paths[0])
    write_warranty_docx(paths[1])
    write_text_document(paths[2], PRIVACY_NOTICE_MD)
    write_text_document(paths[3], TRAVEL_POLICY_MD)
    write_text_document(paths[4], RELEASE_NOTES_HTML)
    return paths


if __name__ == "__main__":
    for written in write_sample_documents(
        Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET
    ):
        print(written)
