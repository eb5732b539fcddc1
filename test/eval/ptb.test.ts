import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PTB_PUNCTUATIONS, ptbLex, ptbTokenize, ptbTokenizeBatch } from '../../src/eval/ptb.js';

/**
 * pycocoevalcap's default tokenization (CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase` + its
 * punctuation filter), rule by rule. Every expected string below was checked against the real CoreNLP
 * 3.4.1 tokenizer (built from the upstream v3.4.1 tag), each caption tokenized on its own; none is a guess.
 * Where CoreNLP's behaviour is surprising the comment says why.
 */
type Case = [input: string, expected: string];

const CASES: Record<string, Case[]> = {
  clitics: [
    ["A man's dog.", "a man 's dog"],
    ["don't can't won't shouldn't ain't", "do n't ca n't wo n't should n't ai n't"],
    ["they're we'll I'm you've he'd", "they 're we 'll i 'm you 've he 'd"],
    // A possessive apostrophe after s is a closing quote: removed.
    ["The dogs' bowls", 'the dogs bowls'],
    // Curly apostrophes split the same way and are normalised to ASCII.
    ['it\u2019s don\u2019t they\u2019re', "it 's do n't they 're"],
    // Assimilations are split (splitAssimilations is on by default).
    ['cannot gonna gotta wanna', 'can not gon na got ta wan na'],
    ["'Twas the night", "'t was the night"],
    // Words the lexer keeps whole ("o'" + letters is a THING; 'n' is its own APOWORD token and survives).
    ["o'clock", "o'clock"],
    ["rock 'n' roll", "rock 'n' roll"],
    ["y'all", "y' all"],
    ["it's 90's music", "it 's 90 's music"],
    ["C'mon nor'easter ma'am", "c'mon nor'easter ma'am"],
    ["l'eau d'Italie", "l'eau d'italie"],
  ],
  quotes: [
    ['He said "hello" twice', 'he said hello twice'],
    ["a sign saying 'open'", 'a sign saying open'],
    ['\u201ccurly\u201d and \u2018single\u2019 quotes', 'curly and single quotes'],
    ['a \u00abquote\u00bb', 'a quote'],
    // Low-9 quotes are not normalised by latexQuotes, so they are not in the filter list and survive.
    ['\u201alow\u201e quotes', '\u201a low \u201e quotes'],
    ["``latex'' quotes", 'latex quotes'],
  ],
  dashes: [
    ['a man -- walking', 'a man walking'],
    ['a man \u2014 walking \u2013 fast', 'a man walking fast'],
    // Runs of 3-4 hyphens become "--" (removed); 2 stay "--" (removed); 5 or more stay as they are (kept).
    ['a-b a--b a---b a----b a-----b', 'a-b a b a b a b a ----- b'],
    ['a - b', 'a b'],
  ],
  ellipses: [
    ['wait... what', 'wait what'],
    ['wait . . . what', 'wait what'],
    ['wait\u2026what', 'wait what'],
    // Six dots: an ellipsis of five, then a period; both removed.
    ['wait...... what', 'wait what'],
  ],
  brackets: [
    // -LRB- etc. survive: the filter lists upper-case forms but the tokens are already lower-cased.
    ['a cat (black) on a chair', 'a cat -lrb- black -rrb- on a chair'],
    ['[blue] {green}', '-lsb- blue -rsb- -lcb- green -rcb-'],
    // SGML-like tags are single tokens.
    ['a <unk> on a <unk>', 'a <unk> on a <unk>'],
    ['a <car> here', 'a <car> here'],
    ['a < b > c', 'a < b > c'],
    // A phone number is one token: its parentheses escaped in place, its space made a no-break space.
    ['(555) 123-4567', '-lrb-555-rrb-\u00a0123-4567'],
  ],
  slashes: [
    // 3.4.1 no longer escapes "/" and "*" (escapeForwardSlashAsterisk is off by default since 2013).
    ['and/or km/h', 'and/or km/h'],
    ['a / b', 'a / b'],
    ['1/2 3/4 12/25/2019', '1/2 3/4 12/25/2019'],
    ['A*B', 'a * b'],
  ],
  currency_percent: [
    ['$5 and $10.50', '$ 5 and $ 10.50'],
    ['US$5', 'us$ 5'],
    // normalizeCurrency: euro -> $, pound -> #, cent -> "cents"; yen is kept.
    ['\u20ac5 \u00a310 \u00a5100 5\u00a2', '$ 5 # 10 \u00a5 100 5 cents'],
    ['10% off', '10 % off'],
    ['100 %', '100 %'],
  ],
  hyphenated: [
    ['a black-and-white photo', 'a black-and-white photo'],
    ['a 10-year-old boy', 'a 10-year-old boy'],
    ["a self-driving car's engine", "a self-driving car 's engine"],
    ['an x-ray of a T-shirt', 'an x-ray of a t-shirt'],
    ['2-3 dogs', '2-3 dogs'],
    ['50-50', '50-50'],
  ],
  periods_and_abbreviations: [
    ['a dog on a table.', 'a dog on a table'],
    ['a dog on a table .', 'a dog on a table'],
    // A period between letters is inside the word.
    ['dog.The end', 'dog.the end'],
    // Abbreviations, acronyms and any single letter keep their period.
    ['Main St.', 'main st.'],
    ['Mr. Smith and Dr. Jones', 'mr. smith and dr. jones'],
    ['the U.S. flag', 'the u.s. flag'],
    ['in the U.S.', 'in the u.s.'],
    ['plan b.', 'plan b.'],
    ['e.g. i.e. a.k.a. vs. etc.', 'e.g. i.e. a.k.a. vs. etc.'],
    ['at 5 p.m. today', 'at 5 p.m. today'],
    // "No." is an abbreviation only before a number.
    ['No. 5 jersey', 'no. 5 jersey'],
    ['apples, oranges, etc.', 'apples oranges etc.'],
  ],
  numbers: [
    ['1,000 people', '1,000 people'],
    ['3.5 miles', '3.5 miles'],
    ['at 3:30', 'at 3:30'],
    ['-5 degrees +3', '-5 degrees +3'],
    // A whole number and a fraction form ONE token joined by a no-break space (normalizeSpace).
    ['1 1/2 cups', '1\u00a01/2 cups'],
    ['\u00bd cup \u00bc \u2153', '1/2 cup 1/4 1/3'],
    ['1st 2nd 3rd', '1st 2nd 3rd'],
    ["the 1990s and '90s", "the 1990s and '90s"],
    ['x\u00b2 H\u2082O', 'x \u00b2 h \u2082 o'],
  ],
  other: [
    // Runs of ! and ? other than a single one are not in the filter list.
    ['hello!!! what?! ok?', 'hello !!! what ?! ok'],
    // Characters outside the BMP (emoji) are untokenizable for the 3.4.1 scanner and deleted.
    ['emoji \ud83d\udc36 dog', 'emoji dog'],
    ['na\u00efve caf\u00e9 se\u00f1or', 'na\u00efve caf\u00e9 se\u00f1or'],
    ['cafe\u0301', 'cafe\u0301'],
    ['\u4e00\u53ea\u732b sitting', '\u4e00\u53ea\u732b sitting'],
    ['&amp; &lt; &gt;', '& < >'],
    // Upper-case letters joined by & are one token; lower-case ones are not.
    ['AT&T and at&t', 'at&t and at & t'],
    ['a C++ and C# book', 'a c++ and c# book'],
    ['a #hashtag and @user', 'a #hashtag and @user'],
    ['visit www.google.com', 'visit www.google.com'],
    ['me@example.com', 'me@example.com'],
    ['a :) smiley', 'a :-rrb- smiley'],
    ['UPPER CASE', 'upper case'],
    ['tab\there', 'tab here'],
    ['no\u00a0break', 'no break'],
    ['zero\u200bwidth', 'zero width'],
    // The soft hyphen is removed from words.
    ['a\u00adb soft hyphen', 'ab soft hyphen'],
    ['', ''],
    ['...', ''],
    ['-LRB- literal', '-lrb- literal'],
  ],
};

describe('PTB tokenization (CoreNLP 3.4.1 + pycocoevalcap filter), case by case', () => {
  for (const [group, cases] of Object.entries(CASES)) {
    it(group, () => {
      for (const [input, expected] of cases) {
        expect({ input, got: ptbTokenize(input) }).toEqual({ input, got: expected });
      }
    });
  }

  it('looks across caption boundaries as the one-file Java run does', () => {
    // An acronym or single letter with a period followed by a capitalised sentence starter on the next
    // line returns its period separately ("b." -> "b" "."), so the kept token changes. Abbreviations like
    // "etc." keep their token either way.
    const batch = [
      'a sign with the letter b.',
      'A man on a bike',
      'the U.S.',
      'The flag',
      'it is etc.',
      'A dog',
    ];
    expect(ptbTokenizeBatch(batch)).toEqual([
      'a sign with the letter b',
      'a man on a bike',
      'the u.s.',
      'the flag',
      'it is etc.',
      'a dog',
    ]);
    expect(batch.map((c) => ptbTokenize(c))[0]).toBe('a sign with the letter b.');
  });

  it('keeps one output line per caption, also for empty and punctuation-only captions', () => {
    // '\n' inside a caption becomes a space (as pycocoevalcap does); so does '\r' (there it would start a
    // new line and shift every later caption onto the wrong image).
    const caps = ['', '...', 'a\nb', ' ', 'x\ry', 'end'];
    const out = ptbTokenizeBatch(caps);
    expect(out).toEqual(['', '', 'a b', '', 'x y', 'end']);
  });

  it('lexes without lower-casing or filtering (raw PTB tokens)', () => {
    expect(ptbLex('A (man) said "hi"...\nBye')).toEqual([
      'A',
      '-LRB-',
      'man',
      '-RRB-',
      'said',
      '``',
      'hi',
      "''",
      '...',
      '*NL*',
      'Bye',
    ]);
  });

  it('filters exactly pycocoevalcap PUNCTUATIONS', () => {
    expect([...PTB_PUNCTUATIONS].sort()).toEqual(
      [
        "''",
        "'",
        '``',
        '`',
        '-LRB-',
        '-RRB-',
        '-LCB-',
        '-RCB-',
        '.',
        '?',
        '!',
        ',',
        ':',
        '-',
        '--',
        '...',
        ';',
      ].sort(),
    );
  });
});

interface OracleFile {
  note: string;
  batches: { name: string; inputs: string[]; expected: string[] }[];
}

describe('PTB tokenization: synthetic batches checked against CoreNLP 3.4.1', () => {
  const file = JSON.parse(
    readFileSync(new URL('./ptb_oracle_cases.json', import.meta.url), 'utf8'),
  ) as OracleFile;
  for (const batch of file.batches) {
    it(`${batch.name} (${batch.inputs.length} captions in one batch)`, () => {
      const got = ptbTokenizeBatch(batch.inputs);
      const wrong = batch.inputs
        .map((input, i) => ({ input, expected: batch.expected[i], got: got[i] }))
        .filter((r) => r.expected !== r.got);
      console.log(`${batch.name}: ${wrong.length} of ${batch.inputs.length} differ`);
      expect(wrong).toEqual([]);
    });
  }
});
