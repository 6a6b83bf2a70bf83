"""Chunking of real parsed documents: sizes, word boundaries, overlap, pages, headings, tables,
CSV headers; and split_to_fit converging against a real token count."""

from __future__ import annotations

import io
import itertools
import pickle
import random
from concurrent.futures import ProcessPoolExecutor

import docx
import pytest
from fpdf import FPDF

from ingest.chunking import Chunk, ChunkingOptions, chunk_document, split_to_fit
from ingest.detect import CSV, DOCX, MARKDOWN, PDF, TEXT
from ingest.parsing import ParsedDocument, ParseError, Section, parse_document
from ingest.tokens import count_tokens

VOCABULARY = [
    "the",
    "river",
    "carries",
    "silt",
    "toward",
    "a",
    "delta",
    "where",
    "reeds",
    "grow",
    "and",
    "herons",
    "wait",
    "while",
    "farmers",
    "measure",
    "rainfall",
    "across",
    "seasons",
    "using",
    "simple",
    "gauges",
    "that",
    "record",
    "every",
    "storm",
    "carefully",
]


def prose(seed: int, paragraphs: int, sentences: tuple[int, int] = (3, 6)) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentence_list = []
        for _ in range(rng.randint(*sentences)):
            words = rng.choices(VOCABULARY, k=rng.randint(5, 16))
            sentence_list.append(" ".join(words).capitalize() + rng.choice(".!?"))
        out.append(" ".join(sentence_list))
    return "\n\n".join(out)


def assert_well_formed(doc: ParsedDocument, chunks: list[Chunk], size: int | None) -> None:
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        body = doc.text[chunk.char_start : chunk.char_end]
        assert chunk.text.endswith(body)
        assert body.strip() == body != ""
        # Never mid-word: the characters around each chunk are whitespace or outside the text.
        assert chunk.char_start == 0 or doc.text[chunk.char_start - 1].isspace()
        assert chunk.char_end == len(doc.text) or doc.text[chunk.char_end].isspace()
        assert chunk.tokens == count_tokens(chunk.text)
        if size is not None:
            assert chunk.tokens <= size


def assert_covers_every_word(doc: ParsedDocument, chunks: list[Chunk]) -> None:
    covered = bytearray(len(doc.text))
    for chunk in chunks:
        covered[chunk.char_start : chunk.char_end] = b"\x01" * (chunk.char_end - chunk.char_start)
    for section in doc.sections:
        for offset in range(section.char_start, section.char_end):
            assert covered[offset] or doc.text[offset].isspace()


@pytest.fixture(scope="module")
def long_text() -> ParsedDocument:
    return parse_document(prose(1, 40).encode(), TEXT, "river.txt")


@pytest.mark.parametrize(("size", "overlap"), [(64, 16), (256, 32), (40, 0)])
def test_text_chunks_fit_never_cut_words_and_cover_everything(
    long_text: ParsedDocument, size: int, overlap: int
) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=size, overlap_tokens=overlap))
    assert len(chunks) > 3
    assert_well_formed(long_text, chunks, size)
    assert_covers_every_word(long_text, chunks)
    for chunk in chunks:
        assert chunk.text == long_text.text[chunk.char_start : chunk.char_end]


def test_consecutive_chunks_overlap(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=64, overlap_tokens=16))
    for previous, current in itertools.pairwise(chunks):
        assert previous.char_start < current.char_start < previous.char_end < current.char_end
        shared = long_text.text[current.char_start : previous.char_end]
        assert 0 < count_tokens(shared) <= 16 + 2


def test_without_overlap_chunks_are_disjoint(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=64, overlap_tokens=0))
    for previous, current in itertools.pairwise(chunks):
        assert previous.char_end < current.char_start


def test_chunks_prefer_sentence_ends(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=128, overlap_tokens=0))
    ends = [chunk.text[-1] in ".!?" for chunk in chunks]
    assert sum(ends) >= 0.9 * len(ends)


def test_an_over_long_word_is_its_own_chunk() -> None:
    word = "x" * 3000
    doc = parse_document(f"{prose(2, 2)} {word} {prose(3, 2)}".encode(), TEXT, "w.txt")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=64, overlap_tokens=8))
    assert_well_formed(doc, chunks, None)
    assert_covers_every_word(doc, chunks)
    too_long = [chunk for chunk in chunks if chunk.tokens > 64]
    assert [chunk.text for chunk in too_long] == [word]


def make_pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def test_pdf_chunks_keep_their_page_and_never_span_pages() -> None:
    pages = [f"Marker{number} opens page {number}. {prose(number, 2)}" for number in (1, 2, 3)]
    doc = parse_document(make_pdf(pages), PDF, "three.pdf")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=48, overlap_tokens=8))
    assert_well_formed(doc, chunks, 48)
    assert_covers_every_word(doc, chunks)
    for chunk in chunks:
        [section] = [
            section
            for section in doc.sections
            if section.char_start <= chunk.char_start and chunk.char_end <= section.char_end
        ]
        assert chunk.page == section.page
    for number in (1, 2, 3):
        [first] = [chunk for chunk in chunks if f"Marker{number}" in chunk.text]
        assert first.page == number
    assert {chunk.page for chunk in chunks} == {1, 2, 3}


def make_docx(table_rows: int = 2) -> bytes:
    document = docx.Document()
    document.add_heading("Field Guide", 0)
    document.add_paragraph("An introduction to the birds of the coast.")
    document.add_heading("Seabirds", 1)
    document.add_heading("Gulls", 2)
    document.add_paragraph("Gulls are loud and eat almost anything.")
    table = document.add_table(rows=1 + table_rows, cols=3)
    for cell, value in zip(table.rows[0].cells, ("Name", "Wingspan", "Diet"), strict=True):
        cell.text = value
    for number, row in enumerate(table.rows[1:]):
        for cell, value in zip(row.cells, (f"Bird {number}", f"{number} cm", "fish"), strict=True):
            cell.text = value
    document.add_heading("Waders", 1)
    document.add_paragraph(prose(5, 3))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_chunks_keep_headings_and_table_rows() -> None:
    doc = parse_document(make_docx(), DOCX, "guide.docx")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=64, overlap_tokens=8))
    assert_well_formed(doc, chunks, 64)
    assert_covers_every_word(doc, chunks)
    by_start = {chunk.text.split("\n")[0]: chunk for chunk in chunks}
    assert by_start["Field Guide"].heading_path == ("Field Guide",)
    assert "An introduction" in by_start["Field Guide"].text
    # A heading directly above a sub-heading travels with it.
    gulls = by_start["Seabirds"]
    assert gulls.heading_path == ("Field Guide", "Seabirds", "Gulls")
    assert gulls.text.startswith("Seabirds\n\nGulls\n\nGulls are loud")
    table = by_start["Name: Bird 0; Wingspan: 0 cm; Diet: fish"]
    assert (
        table.text
        == "Name: Bird 0; Wingspan: 0 cm; Diet: fish\nName: Bird 1; Wingspan: 1 cm; Diet: fish"
    )
    assert table.heading_path == ("Field Guide", "Seabirds", "Gulls")
    waders = [chunk for chunk in chunks if chunk.heading_path == ("Field Guide", "Waders")]
    assert len(waders) > 1
    assert waders[0].text.startswith("Waders\n\n")


def test_long_tables_split_at_rows_without_overlap() -> None:
    doc = parse_document(make_docx(table_rows=40), DOCX, "big-table.docx")
    [table] = [section for section in doc.sections if section.kind == "table"]
    rows = table.text.split("\n")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=64, overlap_tokens=16))
    assert_well_formed(doc, chunks, 64)
    table_chunks = [c for c in chunks if table.char_start <= c.char_start < table.char_end]
    assert len(table_chunks) > 3
    seen = [line for chunk in table_chunks for line in chunk.text.split("\n")]
    assert seen == rows


def test_markdown_chunks_never_cross_top_level_headings() -> None:
    text = (
        f"# Alpha\n\n{prose(6, 3)}\n\n## Alpha detail\n\n{prose(7, 2)}\n\n"
        f"# Beta\n\n{prose(8, 3)}\n\n# Gamma\n\nShort.\n"
    )
    doc = parse_document(text.encode(), MARKDOWN, "doc.md")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=80, overlap_tokens=10))
    assert_well_formed(doc, chunks, 80)
    assert_covers_every_word(doc, chunks)
    tops = {"Alpha": text.index("# Alpha"), "Beta": text.index("# Beta")}
    tops["Gamma"] = text.index("# Gamma")
    for chunk in chunks:
        top = chunk.heading_path[0]
        assert tops[top] <= chunk.char_start
        later = [start for start in tops.values() if start > tops[top]]
        assert chunk.char_end <= min(later, default=len(text))
    assert chunks[-1].text == "# Gamma\n\nShort."
    assert chunks[-1].heading_path == ("Gamma",)


def csv_doc(rows: int = 60) -> ParsedDocument:
    lines = ["Nom;Ville;Remarque"]
    lines += [f"Personne {n};Besançon;Élève numéro {n} à l'école" for n in range(rows)]
    return parse_document("\n".join(lines).encode("latin-1"), CSV, "gens.csv")


@pytest.mark.parametrize("rows_per_chunk", [0, 1, 3])
def test_csv_chunks_repeat_the_header(rows_per_chunk: int) -> None:
    doc = csv_doc()
    options = ChunkingOptions(size_tokens=64, overlap_tokens=8, rows_per_chunk=rows_per_chunk)
    chunks = chunk_document(doc, options)
    assert_well_formed(doc, chunks, 64)
    assert_covers_every_word(doc, chunks)
    body_rows = []
    for chunk in chunks:
        header, *rows = chunk.text.split("\n")
        assert header == "Nom;Ville;Remarque"
        assert "\n".join(rows) == doc.text[chunk.char_start : chunk.char_end]
        if rows_per_chunk:
            assert len(rows) <= rows_per_chunk
        body_rows += rows
    assert body_rows == [section.text for section in doc.sections]
    if rows_per_chunk == 0:
        assert len(chunks) <= len(doc.sections) / 2


def test_csv_row_longer_than_a_chunk_is_split_with_the_header() -> None:
    long_row = "Personne;Besançon;" + prose(9, 1, (8, 8))
    data = f"Nom;Ville;Remarque\n{long_row}\nA;B;C\n".encode()
    doc = parse_document(data, CSV, "long.csv")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=48, overlap_tokens=8))
    assert_well_formed(doc, chunks, 48)
    assert_covers_every_word(doc, chunks)
    assert len(chunks) > 2
    assert all(chunk.text.startswith("Nom;Ville;Remarque\n") for chunk in chunks)
    assert chunks[-1].text == "Nom;Ville;Remarque\nA;B;C"


def test_whitespace_sections_are_dropped() -> None:
    text = "Real words.\n\n   \n\nMore words."
    sections = [
        Section("Real words.", None, (), "text", 0, 11),
        Section("   ", None, (), "text", 13, 16),
        Section("More words.", None, (), "text", 18, 29),
    ]
    chunks = chunk_document(ParsedDocument(text, sections, None, TEXT), ChunkingOptions())
    assert [chunk.text for chunk in chunks] == ["Real words.\n\n   \n\nMore words."]


def model_lengths(chunks: list[Chunk]) -> list[int]:
    """A stand-in for the embedding server's /tokenize: three model tokens per cl100k token."""
    return [3 * count_tokens(chunk.text) for chunk in chunks]


def fit(chunks: list[Chunk], limit: int) -> tuple[list[Chunk], int]:
    rounds, lengths = 0, model_lengths(chunks)
    while any(length > limit for length in lengths):
        chunks = split_to_fit(chunks, lengths, limit)
        lengths = model_lengths(chunks)
        rounds += 1
        assert rounds < 10, "split_to_fit does not converge"
    return chunks, rounds


def test_split_to_fit_converges_on_word_boundaries(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=256, overlap_tokens=32))
    fitted, rounds = fit(chunks, 256)
    assert 1 <= rounds <= 3
    assert len(fitted) > len(chunks)
    assert_well_formed(long_text, fitted, None)
    assert_covers_every_word(long_text, fitted)
    assert all(length <= 256 for length in model_lengths(fitted))
    assert all(c.text == long_text.text[c.char_start : c.char_end] for c in fitted)


def test_split_to_fit_leaves_fitting_chunks_alone(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=64, overlap_tokens=8))
    assert split_to_fit(chunks, model_lengths(chunks), 3 * 64) == chunks


def test_split_to_fit_keeps_the_csv_header() -> None:
    doc = csv_doc()
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=200, overlap_tokens=0))
    fitted, _ = fit(chunks, 200)
    assert len(fitted) > len(chunks)
    assert_well_formed(doc, fitted, None)
    assert all(chunk.text.startswith("Nom;Ville;Remarque\n") for chunk in fitted)


def test_split_to_fit_cuts_a_single_long_word_by_characters() -> None:
    word = "abcdefghij" * 300
    doc = parse_document(f"Before. {word} After.".encode(), TEXT, "w.txt")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=64, overlap_tokens=8))
    fitted, _ = fit(chunks, 100)
    pieces = [chunk for chunk in fitted if set(chunk.text) <= set(word)]
    assert len(pieces) > 1
    assert "".join(chunk.text for chunk in pieces) == word
    assert all(length <= 100 for length in model_lengths(fitted))
    for chunk in fitted:
        assert chunk.text == doc.text[chunk.char_start : chunk.char_end]


def test_split_to_fit_validates_its_arguments(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions())
    with pytest.raises(ValueError, match="one length per chunk"):
        split_to_fit(chunks, [], 256)
    with pytest.raises(ValueError, match="max_tokens"):
        split_to_fit(chunks, model_lengths(chunks), 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_tokens": 0}, "size_tokens"),
        ({"overlap_tokens": -1}, "overlap_tokens"),
        ({"overlap_tokens": 256}, "overlap_tokens"),
        ({"rows_per_chunk": -1}, "rows_per_chunk"),
    ],
)
def test_options_are_validated(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkingOptions(**kwargs)


def test_chunks_and_options_are_picklable(long_text: ParsedDocument) -> None:
    options = ChunkingOptions(size_tokens=100, overlap_tokens=10, rows_per_chunk=2)
    chunks = chunk_document(long_text, options)
    assert pickle.loads(pickle.dumps((options, chunks))) == (options, chunks)


def test_split_to_fit_makes_pieces_of_similar_size(long_text: ParsedDocument) -> None:
    chunks = chunk_document(long_text, ChunkingOptions(size_tokens=256, overlap_tokens=0))
    chunk = chunks[0]
    for factor, expected in ((1.3, 2), (2.0, 3)):
        pieces = split_to_fit([chunk], [int(chunk.tokens * factor)], chunk.tokens)
        assert len(pieces) in (expected, expected + 1)
        assert max(piece.tokens for piece in pieces) < 2 * min(piece.tokens for piece in pieces)


def parse_and_chunk(data: bytes, content_type: str, options: ChunkingOptions) -> list[Chunk]:
    return chunk_document(parse_document(data, content_type, "doc"), options)


def test_parsing_and_chunking_run_in_a_process_pool() -> None:
    options = ChunkingOptions(size_tokens=64, overlap_tokens=8)
    data = prose(11, 5).encode()
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(parse_and_chunk, data, TEXT, options).result(timeout=60)
        failed = pool.submit(parse_and_chunk, b"%PDF-1.7 truncated", PDF, options)
        with pytest.raises(ParseError) as caught:
            failed.result(timeout=60)
    assert remote == parse_and_chunk(data, TEXT, options)
    assert caught.value.reason == "corrupt"


def random_document(seed: int) -> str:
    """Text with mixed scripts, punctuation, odd whitespace and the occasional very long word."""
    rng = random.Random(seed)
    words = [*VOCABULARY, "naïve", "Straße", "日本語のテキスト", "x²+y²", "—", "e.g.", "U.S.", "🙂"]
    out = []
    for _ in range(rng.randint(50, 600)):
        word = "y" * rng.randint(200, 1500) if rng.random() < 0.01 else rng.choice(words)
        out.append(word + rng.choice(["", "", "", ".", ",", "!", ":"]))
        out.append(rng.choice([" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n "]))
    return "".join(out)


@pytest.mark.parametrize("seed", range(12))
def test_invariants_hold_on_random_text(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([16, 48, 128, 256])
    options = ChunkingOptions(size_tokens=size, overlap_tokens=rng.randint(0, size - 1))
    doc = parse_document(random_document(seed).encode(), TEXT, "random.txt")
    chunks = chunk_document(doc, options)
    assert_well_formed(doc, chunks, None)
    assert_covers_every_word(doc, chunks)
    for chunk in chunks:
        assert chunk.tokens <= size or len(chunk.text.split()) == 1
    for previous, current in itertools.pairwise(chunks):
        assert previous.char_start < current.char_start
        assert previous.char_end < current.char_end
    fitted, _ = fit(chunks, max(8, size // 2))
    assert_covers_every_word(doc, fitted)


def test_csv_header_too_long_to_repeat_is_chunked_once() -> None:
    """A 5,689-column header (the review's 56 KB CSV) used to be repeated in front of every row
    and its rows cut into crumbs: it is now chunked once, and every row stays whole."""
    header = ";".join(f"column{number}" for number in range(5689))
    rows = [f"Lyon;France;row {n};Rhône" for n in range(40)]
    doc = parse_document("\n".join([header, *rows]).encode(), CSV, "wide.csv")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=200, overlap_tokens=32))
    header_chunks = [chunk for chunk in chunks if "column" in chunk.text]
    row_chunks = [chunk for chunk in chunks if "Lyon" in chunk.text]
    assert len(chunks) == len(header_chunks) + len(row_chunks)
    assert not any("column" in chunk.text and "Lyon" in chunk.text for chunk in chunks)
    assert "\n".join(chunk.text for chunk in row_chunks) == "\n".join(rows)  # rows whole
    assert "".join(chunk.text for chunk in header_chunks) == header  # cut between cells only
    assert all(chunk.text.endswith(";") for chunk in header_chunks[:-1])
    assert all(chunk.tokens <= 200 for chunk in chunks)
    # nothing repeated: the chunks hold the document's tokens once (give or take the cuts)
    assert sum(chunk.tokens for chunk in chunks) <= 1.05 * count_tokens(doc.text)


def test_csv_row_without_spaces_is_cut_between_cells() -> None:
    row = ";".join(f"value{number}" for number in range(400))
    doc = parse_document(f"a;b\n{row}\nx;y\n".encode(), CSV, "long-row.csv")
    chunks = chunk_document(doc, ChunkingOptions(size_tokens=64, overlap_tokens=0))
    pieces = [chunk.text.removeprefix("a;b\n") for chunk in chunks if "value" in chunk.text]
    assert "".join(pieces) == row
    assert all(len(piece) > 20 for piece in pieces)
    assert all(chunk.tokens <= 64 for chunk in chunks)
